#!/usr/bin/env bash
# Benchmarks fwdd in the e2e sandbox and prints a table of figures against the targets
# (issue 6; results and method in docs/benchmarks.md). Needs root, like scripts/test.sh.
#
#   bash scripts/bench.sh [fwd-bench args…]      e.g. --only start,kill --seq 100
#                                                 or --only setup,engine
#
# Builds release binaries (fwdd, fwdctl, fwd-bench), brings up a sandbox
# (tests/sandbox/up.sh), runs fwd-bench, tears the sandbox down. The table is also
# written to $FWD_BENCH_OUT (default: bench-results.md in the current directory).
# FWD_BENCH_REV=<git rev>: benchmark the daemon of that revision instead of the working
# tree (the bench crate and this script are taken from the working tree).
# CARGO_TARGET_DIR is honoured (default: target/).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: the sandbox creates network namespaces and runs dockerd: run as root" >&2
  exit 1
fi
bash scripts/install-deps.sh
# The pgbench group's real client and server (the server's binaries are
# bind-mounted into a container on the sandbox's Docker host).
if ! command -v pgbench >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "bench.sh: installing postgresql for the pgbench figures" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

src=$root
if [ -n "${FWD_BENCH_REV:-}" ]; then
  src=$(mktemp -d /tmp/fwdbench-src.XXXXXX)
  git -C "$root" archive "$FWD_BENCH_REV" | tar -x -C "$src"
  # git archive stamps files with the commit's time: a build of another
  # revision made later in the same target dir would look fresh to cargo.
  find "$src" -type f -exec touch {} +
  cp -r "$root/bench" "$src/"
  grep -q '"bench"' "$src/Cargo.toml" ||
    sed -i 's|^members = \[\(.*\)\]|members = [\1, "bench"]|' "$src/Cargo.toml"
  echo "bench.sh: daemon from $FWD_BENCH_REV ($(git -C "$root" rev-parse --short "$FWD_BENCH_REV")), built in $src" >&2
fi
target=${CARGO_TARGET_DIR:-$root/target}
# fwdd carries its UDP relay from beside its own binary (the udp figures);
# a revision from before the relay has none to build.
relay=()
[ -d "$src/crates/fwd-udp-relay" ] && relay=(-p fwd-udp-relay)
(cd "$src" && CARGO_TARGET_DIR="$target" cargo build --release -p fwdd -p fwdctl "${relay[@]}" -p fwd-bench)

sandbox=$(mktemp -d /tmp/fwdbn.XXXXXX)
cleanup() {
  bash "$root/tests/sandbox/down.sh" "$sandbox" || true
  if [ "$src" != "$root" ]; then rm -rf "$src"; fi
}
trap cleanup EXIT
bash tests/sandbox/up.sh "$sandbox"

out=${FWD_BENCH_OUT:-bench-results.md}
{
  echo "# fwd-bench $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
  echo "$(ssh -V 2>&1); dockerd $(docker -H "unix://$sandbox/docker.sock" version --format '{{.Server.Version}} (API {{.Server.APIVersion}}), docker CLI {{.Client.Version}}')"
  echo
} | tee "$out"
FWD_SANDBOX="$sandbox/env" FWD_BENCH_BIN_DIR="$target/release" FWD_BENCH_LOGDIR="${FWD_BENCH_LOGDIR:-}" \
  "$target/release/fwd-bench" "$@" | tee -a "$out"
