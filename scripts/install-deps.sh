#!/usr/bin/env bash
# Installs what vdev's tests and benchmarks need on Debian 12 (run as root): the peer tools the tests
# compare against, and what the VM harness uses to boot a real kernel. Safe to run again.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (apt-get)" >&2
  exit 1
fi
PACKAGES=(
  e2fsprogs util-linux fdisk dosfstools fuse3 cpio time zstd
  strace             # test/sys/dirsync: each new file fsynced before its rename, its directory after
  gddrescue          # real GNU ddrescue mapfiles
  nbdkit libnbd-bin python3-libnbd nbd-client qemu-utils   # NBD peers: nbdkit, nbdinfo, nbdcopy, nbdfuse, qemu-img, qemu-nbd
  libnfs-utils       # nfs-ls, nfs-cat
  libiscsi-bin qemu-block-extra   # iSCSI peers: iscsi-test-cu, iscsi-inq, iscsi-ls, iscsi-readcapacity16, iscsi-perf; qemu's iscsi:// driver
  open-iscsi         # iscsistart: the kernel initiator's login in the VM
  ewf-tools xmount fio   # benchmark peers
  nginx-light        # remote images: the HTTP(S) server test/remote starts and stops itself
  libcurl4           # remote images: serving threads GET random reads themselves through libcurl (src/remote/curl.ts)
  ceph-mon ceph-osd radosgw   # remote images: the S3 server (RADOS Gateway on a one-node cluster, no mgr needed) test/remote/rgw.ts starts and stops itself
  tgt                # bench:iscsi: Linux's userspace iSCSI target (tgtd, tgtadm)
  par2               # recovery data: par2cmdline, the peer repair and bench:recovery compare with
  qemu-system-x86 busybox-static   # the real-kernel VM harness
  gcc libc6-dev linux-libc-dev     # ABI tests compile C against the kernel's UAPI headers
  wine64 gcc-mingw-w64-x86-64      # Windows code under Wine (test/windows): Windows Node, stand-in DLLs built with mingw-w64
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The VM harness resolves the current bookworm 6.12 kernel through apt, so the lists must be fresh.
apt-get update -qq
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: Debian packages ready"
