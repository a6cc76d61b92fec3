#!/bin/bash
# A/B of random 4 KiB reads through vdev's iSCSI target (docs/iscsi.md, "Benchmark"): two vdev builds serve
# one image each (`vdev serve --protocol iscsi`, two copies of one image), then libiscsi's iscsi-perf reads
# each in turn (random 4 KiB, QD), ROUNDS times; prints IOPS and the server's CPU µs per read (utime + stime
# of the whole server process over the run: moves far less with the machine's load than IOPS).
#   bench/ab-iscsi.sh BUILD_A IMAGE_A BUILD_B IMAGE_B [ROUNDS] [QD] [SECONDS]
set -euo pipefail
A=$1; IA=$2; B=$3; IB=$4; ROUNDS=${5:-3}; QD=${6:-32}; SECS=${7:-8}
TICK=$(getconf CLK_TCK)
DIR=$(mktemp -d /tmp/ab-iscsi.XXXXXX)
free_port() { node -e 's=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
start() { # build image name
  local port; port=$(free_port)
  setsid node "$1/bin/run.js" serve "$2" --protocol iscsi --listen "127.0.0.1:$port" --json > "$DIR/$3.out" 2> "$DIR/$3.err" < /dev/null &
  echo $! > "$DIR/$3.pid"
  for _ in $(seq 100); do [ -s "$DIR/$3.out" ] && break; sleep 0.1; done
}
start "$A" "$IA" A; start "$B" "$IB" B
cleanup() { for x in A B; do kill "$(cat "$DIR/$x.pid")" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
cat "$IA" "$IB" > /dev/null
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
one() { # name
  local pid uri c0 c1 iops; pid=$(cat "$DIR/$1.pid"); uri=$(node -pe "JSON.parse(require('fs').readFileSync('$DIR/$1.out','utf8')).uri")
  c0=$(cpu "$pid")
  iops=$(iscsi-perf -i iqn.2026-01.dev.vdev:ab -r -m "$QD" -b 8 -t "$SECS" "$uri" 2>&1 | tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}')
  c1=$(cpu "$pid")
  echo "$1 iops=$iops cpu_us_per_read=$(( (c1 - c0) * 1000000 / TICK / (iops * SECS) )) load=$(cut -d' ' -f1 /proc/loadavg)"
}
for r in $(seq "$ROUNDS"); do one A; one B; done
