#!/bin/bash
# A/B of whole-device sequential reads through FUSE + loop (docs/performance.md): two vdev builds attach one
# image each (two copies of one image); then, ROUNDS times and taking turns, each device is read whole with
# 1 MiB O_DIRECT reads (dd iflag=direct) and with buffered reads (cat), cold (the image file evicted from the
# page cache with posix_fadvise DONTNEED and every cache dropped) or warm (the image file read first).
# Prints seconds per read and the server's CPU seconds (utime + stime, all its threads).
#   bench/ab-seq.sh BUILD_A IMAGE_A BUILD_B IMAGE_B [ROUNDS] [cold|warm]
# ENV_A / ENV_B: extra environment for each attach. Uses its own VDEV_STATE_DIR; detaches its own at exit.
set -euo pipefail
A=$1; IA=$2; B=$3; IB=$4; ROUNDS=${5:-3}; STATE=${6:-cold}
. "$(dirname "$0")/ab-attach.sh" ab-seq
prepare() { # image device
  sync; echo 3 > /proc/sys/vm/drop_caches
  # DONTNEED too: drop_caches leaves pages the loop device or a mapping still holds.
  python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)' "$1"
  blockdev --flushbufs "$2"
  if [ "$STATE" = warm ]; then cat "$1" > /dev/null; fi
}
one() { # name dev pid image how
  prepare "$4" "$2"
  local c0; c0=$(cpu "$3")
  local t0; t0=$(date +%s.%N)
  if [ "$5" = direct ]; then dd if="$2" of=/dev/null bs=1M iflag=direct status=none; else cat "$2" > /dev/null; fi
  local t1; t1=$(date +%s.%N)
  local c1; c1=$(cpu "$3")
  echo "$1 $5 $STATE s=$(echo "$t1 - $t0" | bc | sed 's/^\./0./' | cut -c1-5) cpu_s=$(echo "scale=2; ($c1 - $c0) / $TICK" | bc) load=$(cut -d' ' -f1 /proc/loadavg)"
}
# The order flips every round: on this VM a read right after another one's page cache was dropped runs
# faster than one after a run that used little (freed guest pages come back cheaper), so A-then-B always
# would favour B under `cat`.
for r in $(seq "$ROUNDS"); do
  for how in direct cat; do
    if [ $((r % 2)) = 1 ]; then
      one A "$devA" "$pidA" "$IA" "$how"; one B "$devB" "$pidB" "$IB" "$how"
    else
      one B "$devB" "$pidB" "$IB" "$how"; one A "$devA" "$pidA" "$IA" "$how"
    fi
  done
done
