#!/usr/bin/env bash
# A self-contained demo on a fresh machine: builds fwd, starts a sandbox
# Docker host (real dockerd + sshd in a network namespace), runs fwdd in
# front of it and shows a container's port served on the runner's localhost.
# Needs root (network namespaces, dockerd). Ctrl-C ends it and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: the sandbox needs network namespaces and dockerd: run as root" >&2
  exit 1
fi
bash scripts/install-deps.sh
cargo build --quiet -p fwdd -p fwdctl -p fwd-e2e --bins
target="${CARGO_TARGET_DIR:-target}"
sandbox=$(mktemp -d /tmp/fwdsb.XXXXXX)
cleanup() { bash tests/sandbox/down.sh "$sandbox" >/dev/null 2>&1 || true; }
trap cleanup EXIT
bash tests/sandbox/up.sh "$sandbox"
FWD_SANDBOX="$sandbox/env" FWD_BIN_DIR="$target/debug" "$target/debug/fwd-demo"
