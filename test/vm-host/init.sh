#!/bin/busybox sh
# /init of the vdev test VM (built into the initramfs by test/vm-host/assets.ts).
# Loads the modules, mounts the host's root read-only over virtio-9p at /host with tmpfs /tmp and /run on top,
# mounts the writable shared folder at /host/run/vdev-vm, then runs its run.sh chrooted into the host root
# (so the guest uses the host's own node, tools and project checkout), and powers off.
/bin/busybox --install -s /bin
export PATH=/bin

say() { echo "vdev-vm: $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say "init at $(cut -d' ' -f1 /proc/uptime)s"

for m in $(cat /modules/order); do
  insmod "/modules/$m.ko" || say "insmod $m failed"
done
ip link set lo up
hostname vdev-vm

# Host root: read-only, cached (nothing changes it during a run); msize raised for throughput.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host || say "cannot mount hostroot"
mkdir -p /share
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmshare /share || say "cannot mount vmshare"
# The checkout may live under /tmp or /run (a CI clone, say), which the tmpfs mounts below would hide:
# keep each path listed in the share's `keep` file visible at the same place, by bind mounts.
keep() {
  n=0
  while read -r p; do
    case "$p" in /tmp/*|/run/*) ;; *) continue ;; esac
    n=$((n + 1))
    if [ "$1" = save ]; then
      mkdir -p "/keep/$n" && mount --bind "/host$p" "/keep/$n" || say "cannot keep $p"
    else
      mkdir -p "/host$p" && mount --bind "/keep/$n" "/host$p" || say "cannot restore $p"
    fi
  done < /share/keep
}
[ -f /share/keep ] && keep save
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=755 tmpfs /host/run
mkdir -p /host/run/vdev-vm
mount --bind /share /host/run/vdev-vm || say "cannot bind vmshare"
[ -f /share/keep ] && keep restore

if [ -f /host/run/vdev-vm/run.sh ]; then
  say "running run.sh at $(cut -d' ' -f1 /proc/uptime)s"
  chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp \
    VDEV_IN_VM=1 /bin/sh /run/vdev-vm/run.sh
  say "run.sh exited $? at $(cut -d' ' -f1 /proc/uptime)s"
else
  say "no run.sh in the shared folder"
fi
sync
umount /host/run/vdev-vm 2>/dev/null
poweroff -f
