#!/bin/bash
# A/B of random 4 KiB reads through FUSE + loop (docs/performance.md, "Random reads"): two vdev builds attach
# one image each (two copies of one image), then fio randread runs against each in turn, ROUNDS times, and
# prints IOPS and the server's CPU µs per read (utime + stime of the whole server process, all threads,
# over the run: moves far less with the machine's load than IOPS).
#   bench/ab-random.sh BUILD_A IMAGE_A BUILD_B IMAGE_B [ROUNDS] [QD] [SECONDS]
# BUILD_x: a checkout with dist/ built (its bin/run.js is used); ENV_A / ENV_B: extra environment for each
# attach (e.g. ENV_B="VDEV_FUSE_POLL_US=200"). Uses its own VDEV_STATE_DIR, so it never
# touches devices attached by anyone else; detaches its own at exit.
set -euo pipefail
A=$1; IA=$2; B=$3; IB=$4; ROUNDS=${5:-3}; QD=${6:-32}; SECS=${7:-10}
. "$(dirname "$0")/ab-attach.sh" ab-random
cat "$IA" "$IB" > /dev/null
one() { # name dev pid
  local c0; c0=$(cpu "$3")
  local out; out=$(fio --name=rand --filename="$2" --ioengine=libaio --direct=1 --rw=randread --bs=4k --iodepth="$QD" \
    --time_based --runtime="$SECS" --norandommap --randrepeat=0 --output-format=json)
  local c1; c1=$(cpu "$3")
  local ios; ios=$(echo "$out" | node -pe 'const j=JSON.parse(require("fs").readFileSync(0,"utf8").replace(/^[^{]*/,"")).jobs[0].read; j.total_ios+" "+Math.round(j.iops)')
  set -- "$1" $ios "$c0" "$c1"
  echo "$1 iops=$3 cpu_us_per_read=$(( ($5 - $4) * 1000000 / TICK / $2 )) load=$(cut -d' ' -f1 /proc/loadavg)"
}
for r in $(seq "$ROUNDS"); do
  one A "$devA" "$pidA"
  one B "$devB" "$pidB"
done
