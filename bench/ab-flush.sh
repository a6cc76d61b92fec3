#!/bin/bash
# A/B of whole-device sequential reads through FUSE + loop (docs/performance.md, "Sequential reads: a run's
# stored bytes in one pread …"): the builds take turns, each attaching IMG fresh (REPS times) and reading the
# device ROUNDS times with `cat` and with 1 MiB O_DIRECT reads (dd iflag=direct; SKIPDD=1: cat only). Between
# passes the device's page cache is emptied with BLKFLSBUF (FLUSH=1: freed pages are reused, without the
# guest's cost of faulting fresh ones that follows drop_caches), or every cache dropped and IMG read again.
# Prints seconds per pass and the server's CPU ticks (utime + stime of all its threads) in parentheses.
#   BUILDS="DIR_A DIR_B" IMG=FILE [REPS=2] [ROUNDS=3] [FLUSH=1] [SKIPDD=1] bench/ab-flush.sh
# A build is a directory with bin/run.js and dist/ (a copy of a checkout after `npm run build`).
IMG=${IMG:?IMG=image.vdimg}
for rep in $(seq ${REPS:-2}); do
  for b in ${BUILDS:?BUILDS=\"DIR_A DIR_B\"}; do
    export VDEV_STATE_DIR=$(mktemp -d /tmp/ab-flush.XXXXXX)
    dev=$(node $b/bin/run.js attach $IMG --backend fuse --json | node -pe 'JSON.parse(require("fs").readFileSync(0)).device')
    pid=$(node $b/bin/run.js list --json | node -pe 'JSON.parse(require("fs").readFileSync(0))[0].pid')
    cpu() { awk '{print $14+$15}' /proc/$pid/stat; }
    out=""
    for r in $(seq ${ROUNDS:-3}); do
      if [ -n "$FLUSH" ]; then blockdev --flushbufs $dev; else echo 3 > /proc/sys/vm/drop_caches; cat $IMG > /dev/null; fi
      c0=$(cpu); s=$( { /usr/bin/time -f %e cat $dev > /dev/null; } 2>&1 ); c1=$(cpu)
      if [ -z "$SKIPDD" ]; then d=$( { /usr/bin/time -f %e dd if=$dev of=/dev/null bs=1M iflag=direct status=none; } 2>&1 ); else d=-; fi; c2=$(cpu)
      out="$out | cat $s ($((c1-c0)))"
      [ -z "$SKIPDD" ] && out="$out dd $d ($((c2-c1)))"
    done
    node $b/bin/run.js detach --all --force > /dev/null
    rm -rf $VDEV_STATE_DIR
    echo "$b $out"
  done
done
