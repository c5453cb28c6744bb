#!/usr/bin/env bash
# The demo of the README's "Try it": builds fwd, starts a sandbox Docker host
# (a dockerd and an sshd of its own, in a network namespace of their own: the
# system's Docker and SSH are left alone), runs fwdd in a "runner" namespace in
# front of it, and once a container's port answers there, prints a tour: one
# command for a shell where the README's commands work as written.
# Needs root (network namespaces, dockerd). Ctrl-C ends it and removes all it
# started.
#
#   FWD_DEMO_CHECK=1   run the tour's commands instead of waiting for Ctrl-C, say
#                      how each went, clean up, exit 0 only if every one worked
#                      (the e2e test runs the demo this way, as a newcomer would)
#   FWD_BIN_DIR=DIR    take fwdd, fwdctl and fwd-demo from DIR instead of building
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "demo.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "the sandbox needs network namespaces and dockerd: run as root"

# What the demo uses, and only that (the test suite's much longer list is
# scripts/install-deps.sh). The README's "Try it" names the same packages.
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
{ command -v ssh && command -v ssh-keygen; } >/dev/null || missing+=(openssh-client)
[ -x /usr/sbin/dockerd ] && command -v docker >/dev/null || missing+=(docker.io)
# (grep without -q: under pipefail an early exit would SIGPIPE busybox and
# make a present busybox look missing)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x httpd >/dev/null || missing+=(busybox-static)
command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || missing+=(iptables)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || missing+=(iproute2)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    echo "demo.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's busybox-static is static; a dynamic busybox cannot run in the
# test image, which holds nothing else.
case "$(ldd /bin/busybox 2>&1 || true)" in
    *"not a dynamic"* | *"statically linked"*) ;;
    *) die "/bin/busybox is not static (apt-get install busybox-static)" ;;
esac

if [ -n "${FWD_BIN_DIR:-}" ]; then
    bin=$(cd "$FWD_BIN_DIR" && pwd)
else
    command -v cargo >/dev/null || die "building fwd needs Rust's cargo (https://rustup.rs)"
    cargo build --quiet -p fwdd -p fwdctl -p fwd-e2e --bins
    target="${CARGO_TARGET_DIR:-target}"
    bin=$(cd "$target/debug" && pwd)
fi

# The sandbox: a network namespace with a dockerd in it and a busybox image,
# the part of tests/sandbox/up.sh the demo uses (up.sh also starts Podman,
# rootless engines and their users, for the tests). tests/sandbox/down.sh
# removes it, and whatever fwd-demo left under it.
DIR=$(mktemp -d /tmp/fwdsb.XXXXXX)
cleanup() {
    echo "demo.sh: removing the sandbox $DIR" >&2
    bash tests/sandbox/down.sh "$DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
RUN_ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
echo "$RUN_ID" > "$DIR/run_id"
NS="fwdr-$RUN_ID"
SOCK="$DIR/docker.sock"
echo "demo.sh: sandbox $DIR (run $RUN_ID): starting its dockerd" >&2
mkdir -p "$DIR/slots" "$DIR/h"
ip netns add "$NS"
ip -n "$NS" link set lo up
# nsenter (not `ip netns exec`, which remounts /sys and hides the cgroup
# mounts); dockerd's own iptables rules then live inside the namespace.
setsid nsenter --net="/var/run/netns/$NS" /usr/sbin/dockerd \
    -H "unix://$SOCK" --data-root "$DIR/data" --exec-root "$DIR/exec" \
    --pidfile "$DIR/docker.pid" </dev/null >"$DIR/dockerd.log" 2>&1 &
launcher=$!
deadline=$(( $(date +%s) + 60 ))
until docker -H "unix://$SOCK" version >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ] || ! kill -0 "$launcher" 2>/dev/null; then
        tail -n 40 "$DIR/dockerd.log" >&2 || true
        die "the sandbox's dockerd did not come up (its log above)"
    fi
    sleep 0.2
done
IMAGE="fwd-test/busybox:latest"
IMG="$DIR/img"
mkdir -p "$IMG/bin" "$IMG/www" "$IMG/tmp"
cp /bin/busybox "$IMG/bin/busybox"
for l in httpd sh nc sleep cat echo ls wget; do ln -s busybox "$IMG/bin/$l"; done
echo hello > "$IMG/www/index.html"
tar -C "$IMG" -c . | docker -H "unix://$SOCK" import -c 'ENV PATH=/bin' - "$IMAGE" >/dev/null
rm -rf "$IMG"
# What the e2e harness (fwd-demo is built on it) reads; the demo starts no
# other engine, so their entries are empty.
cat > "$DIR/env" <<EOF
FWD_SANDBOX_DIR=$DIR
FWD_SANDBOX_RUN_ID=$RUN_ID
FWD_SANDBOX_REMOTE_NS=$NS
FWD_SANDBOX_DOCKER_SOCK=$SOCK
FWD_SANDBOX_IMAGE=$IMAGE
FWD_SANDBOX_SUBNET_PREFIX=10.$(( 64 + 0x${RUN_ID:0:2} % 128 ))
FWD_SANDBOX_PYTHON=
FWD_SANDBOX_PODMAN_SOCK=
FWD_SANDBOX_ROOTLESS_DOCKER_USER=
FWD_SANDBOX_ROOTLESS_DOCKER_SOCK=
FWD_SANDBOX_ROOTLESS_PODMAN_USER=
FWD_SANDBOX_ROOTLESS_PODMAN_SOCK=
EOF

FWD_SANDBOX="$DIR/env" FWD_BIN_DIR="$bin" "$bin/fwd-demo"
