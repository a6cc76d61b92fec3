# Sourced by bench/ab-*.sh: attaches image IA with build A and image IB with build B through FUSE + loop,
# each with its own environment (ENV_A / ENV_B), under a VDEV_STATE_DIR of its own unless one is set, and
# detaches them at exit. Sets devA, pidA, devB, pidB; defines cpu PID (utime + stime, in clock ticks) and TICK.
# Expects A, IA, B, IB set and `set -euo pipefail`; $1 names the temporary state directory.
OWN_STATE=
if [ -z "${VDEV_STATE_DIR:-}" ]; then OWN_STATE=$(mktemp -d "/tmp/$1.XXXXXX"); fi
export VDEV_STATE_DIR=${VDEV_STATE_DIR:-$OWN_STATE}
TICK=$(getconf CLK_TCK)
attach() { env $3 node "$1/bin/run.js" attach "$2" --backend fuse --json; }
DA=$(attach "$A" "$IA" "${ENV_A:-}"); DB=$(attach "$B" "$IB" "${ENV_B:-}")
cleanup() { node "$A/bin/run.js" detach --all --force >/dev/null 2>&1 || true; [ -n "$OWN_STATE" ] && rm -rf "$OWN_STATE" || true; }
trap cleanup EXIT
field() { node -pe "JSON.parse(require('fs').readFileSync(0)).$1"; }
devA=$(echo "$DA" | field device); pidA=$(echo "$DA" | field pid)
devB=$(echo "$DB" | field device); pidB=$(echo "$DB" | field pid)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
