#!/usr/bin/env bash
# Runs every test of the workspace: unit and property tests, and the
# end-to-end tests against a real sshd + dockerd sandbox (tests/sandbox).
# Needs root (network namespaces, dockerd). Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the end-to-end tests create network namespaces and run dockerd: run as root" >&2
  exit 1
fi
bash scripts/install-deps.sh

sandbox=$(mktemp -d /tmp/fwdsb.XXXXXX)
cleanup() { bash tests/sandbox/down.sh "$sandbox" || true; }
trap cleanup EXIT
bash tests/sandbox/up.sh "$sandbox"

# In CI a missing sandbox must fail the e2e tests instead of skipping them.
export CI="${CI:-true}"
FWD_SANDBOX="$sandbox/env" cargo test --workspace --locked --no-fail-fast "$@"

# The code macOS runs (none of the Linux-only calls; build/platform.rs),
# built and run here: the unit tests of the crates that have such paths, and
# the core of the e2e tests against fwdd and fwdctl built that way.
portable=fwd-ssh/portable,fwdd/portable,fwdctl/portable
cargo test --locked --no-fail-fast -p fwd-ssh -p fwdd -p fwdctl --features "$portable" "$@"
FWD_SANDBOX="$sandbox/env" FWD_E2E_FEATURES=portable cargo test --locked --no-fail-fast \
  -p fwd-e2e --test forwarding --test engine --test fwdctl "$@"
