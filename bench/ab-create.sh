#!/bin/bash
# A/B of `vdev create INPUT OUT` between builds (directories holding bin/run.js and dist/), taking turns,
# input warm (COLD=1: evicted with dd iflag=nocache first), with qemu-img convert -c -O qcow2 -o
# compression_type=zstd of the same input when QEMU=1; prints wall / user / sys / user+sys and the load.
# usage: [QEMU=1] [COLD=1] bench/ab-create.sh INPUT OUTDIR ROUNDS BUILD_DIR...
in=$1; out=$2; rounds=$3; shift 3
t=$(mktemp)
prep() { if [ -n "$COLD" ]; then dd if="$in" iflag=nocache count=0 status=none; else cat "$in" > /dev/null; fi; }
one() {
  prep
  /usr/bin/time -o "$t" -f '%e %U %S' "$@" > /dev/null
  read -r e u s < "$t"
  echo "$e $u $s $(echo "$u + $s" | bc)"
}
for r in $(seq 1 "$rounds"); do
  for b in "$@"; do
    echo "$(basename "$b") $(one node "$b/bin/run.js" create --force "$in" "$out/ab.vdimg") load $(cut -d' ' -f1 /proc/loadavg)"
  done
  [ -n "$QEMU" ] && echo "qemu-img $(one qemu-img convert -c -O qcow2 -o compression_type=zstd "$in" "$out/ab.qcow2") load $(cut -d' ' -f1 /proc/loadavg)"
done
rm -f "$t" "$out/ab.vdimg" "$out/ab.qcow2"
