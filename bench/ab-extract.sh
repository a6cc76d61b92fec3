#!/bin/bash
# A/B of `vdev extract IMG - | dd` between builds (directories holding bin/run.js and dist/), taking turns,
# warm image (COLD=1: IMG evicted from the page cache before each vdev run); prints wall / user / sys /
# user+sys of the vdev process per run (not dd's), the load average, and the same for `zstd -d -c $ZST`
# (warm) when ZST is set. Extra vdev arguments in $ARGS.
# usage: [COLD=1] [ZST=corpus.zst] bench/ab-extract.sh IMG ROUNDS BUILD_DIR...
img=$1; rounds=$2; shift 2
t=$(mktemp)
cat "$img" > /dev/null
[ -n "$ZST" ] && cat "$ZST" > /dev/null
one() {
  [ -n "$COLD" ] && [ "$1" = node ] && dd if="$img" iflag=nocache count=0 status=none
  /usr/bin/time -o "$t" -f '%e %U %S' "$@" | dd of=/dev/null bs=1M status=none
  read -r e u s < "$t"
  echo "$e $u $s $(echo "$u + $s" | bc)"
}
for r in $(seq 1 "$rounds"); do
  for b in "$@"; do
    echo "$(basename "$b") $(one node "$b/bin/run.js" extract "$img" - $ARGS) load $(cut -d' ' -f1 /proc/loadavg)"
  done
  [ -n "$ZST" ] && echo "zstd-d $(one zstd -d -c "$ZST") load $(cut -d' ' -f1 /proc/loadavg)"
done
rm -f "$t"
