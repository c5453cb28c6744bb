#!/usr/bin/env bash
# Start the shared e2e sandbox: a "remote" network namespace running its own dockerd,
# plus the busybox test image. Usage: tests/sandbox/up.sh DIR   (keep DIR short, e.g. /tmp/fwdsb.XXXX)
#
# Writes DIR/env (KEY=VALUE lines); export FWD_SANDBOX=DIR/env for the fwd-e2e harness.
# Idempotent: if DIR/env exists and its dockerd answers, it does nothing.
# Tear down with tests/sandbox/down.sh DIR.
set -euo pipefail

# alive PID: process exists and is not a zombie
alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
die() { echo "up.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 DIR"
[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, dockerd)"

mkdir -p "$1"
DIR=$(cd "$1" && pwd)
# unix socket paths are limited to 107 bytes; per-test ControlPaths live under DIR too.
[ ${#DIR} -le 40 ] || die "DIR too long (${#DIR} chars, max 40): $DIR"

for bin in /usr/sbin/dockerd /usr/sbin/sshd nsenter ip ssh-keygen curl; do
    command -v "$bin" >/dev/null || die "missing $bin (apt-get install -y openssh-server docker.io busybox-static iptables iproute2)"
done
BUSYBOX=""
for b in /bin/busybox /usr/bin/busybox; do
    [ -x "$b" ] || continue
    ldd_out=$(ldd "$b" 2>&1 || true)
    if [[ "$ldd_out" == *"not a dynamic"* || "$ldd_out" == *"statically linked"* ]]; then BUSYBOX=$b; break; fi
done
[ -n "$BUSYBOX" ] || die "no static busybox found (apt-get install -y busybox-static)"

SOCK="$DIR/docker.sock"
DOCKER=(docker -H "unix://$SOCK")

if [ -f "$DIR/env" ] && "${DOCKER[@]}" version >/dev/null 2>&1; then
    echo "up.sh: sandbox already up in $DIR"
    exit 0
fi

if [ -f "$DIR/run_id" ]; then
    RUN_ID=$(cat "$DIR/run_id")
else
    RUN_ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
    echo "$RUN_ID" > "$DIR/run_id"
fi
NS="fwdr-$RUN_ID"
# A /16 for the per-test /30s, derived from the run id (10.64.0.0 .. 10.191.0.0).
# Each run has its own remote netns so overlaps between runs could not clash anyway.
SUBNET_PREFIX="10.$(( 64 + 0x${RUN_ID:0:2} % 128 ))"

mkdir -p /run/sshd "$DIR/slots" "$DIR/h"
chmod 0755 /run/sshd

if ! ip netns list | awk '{print $1}' | grep -qx "$NS"; then
    ip netns add "$NS"
fi
ip -n "$NS" link set lo up

if [ -f "$DIR/docker.pid" ] && alive "$(cat "$DIR/docker.pid")"; then
    echo "up.sh: dockerd already running (pid $(cat "$DIR/docker.pid")), waiting for it"
else
    rm -f "$DIR/docker.pid" "$SOCK"
    # nsenter (not `ip netns exec`, which remounts /sys and hides the cgroup mounts).
    # dockerd's own iptables rules then live inside the namespace.
    setsid nsenter --net="/var/run/netns/$NS" /usr/sbin/dockerd \
        -H "unix://$SOCK" \
        --data-root "$DIR/data" \
        --exec-root "$DIR/exec" \
        --pidfile "$DIR/docker.pid" \
        </dev/null >"$DIR/dockerd.log" 2>&1 &
    echo $! > "$DIR/dockerd.launcher.pid"
fi

deadline=$(( $(date +%s) + 30 ))
until "${DOCKER[@]}" version >/dev/null 2>&1; do
    launcher=$(cat "$DIR/dockerd.launcher.pid" 2>/dev/null || echo 0)
    if [ "$(date +%s)" -ge "$deadline" ] || { [ "$launcher" != 0 ] && ! alive "$launcher"; }; then
        echo "up.sh: dockerd did not come up; tail of $DIR/dockerd.log:" >&2
        tail -n 40 "$DIR/dockerd.log" >&2 || true
        exit 1
    fi
    sleep 0.2
done

IMAGE="fwd-test/busybox:latest"
if ! "${DOCKER[@]}" image inspect "$IMAGE" >/dev/null 2>&1; then
    IMG="$DIR/img"
    rm -rf "$IMG"
    mkdir -p "$IMG/bin" "$IMG/www" "$IMG/tmp"
    cp "$BUSYBOX" "$IMG/bin/busybox"
    for l in httpd sh nc sleep cat echo ls wget; do ln -s busybox "$IMG/bin/$l"; done
    echo hello > "$IMG/www/index.html"
    tar -C "$IMG" -c . | "${DOCKER[@]}" import -c 'ENV PATH=/bin' - "$IMAGE" >/dev/null
    rm -rf "$IMG"
fi

# Podman (rootful, Debian's), serving its Docker-compatible API on a socket of
# the sandbox from the remote namespace, with storage and configuration of its
# own (nothing under /etc or /var/lib): the other engine fwd must work with.
command -v podman >/dev/null || die "missing podman (apt-get install -y podman)"
PM="$DIR/podman"
PM_SOCK="$PM/podman.sock"
mkdir -p "$PM"
# The VM's hard limits are below Podman's default ulimits ("error setting rlimit").
cat > "$PM/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
events_logger = "file"
cgroup_manager = "cgroupfs"
CONF
PODMAN=(podman --root "$PM/root" --runroot "$PM/run" --tmpdir "$PM/tmp")
if ! curl -sf --unix-socket "$PM_SOCK" http://podman/_ping >/dev/null 2>&1; then
    rm -f "$PM_SOCK"
    CONTAINERS_CONF="$PM/containers.conf" setsid nsenter --net="/var/run/netns/$NS" \
        "${PODMAN[@]}" system service --time=0 "unix://$PM_SOCK" \
        </dev/null >"$PM/service.log" 2>&1 &
    deadline=$(( $(date +%s) + 30 ))
    until curl -sf --unix-socket "$PM_SOCK" http://podman/_ping >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "up.sh: podman's API did not come up; tail of $PM/service.log:" >&2
            tail -n 20 "$PM/service.log" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
fi
if ! docker -H "unix://$PM_SOCK" image inspect "$IMAGE" >/dev/null 2>&1; then
    "${DOCKER[@]}" save "$IMAGE" | docker -H "unix://$PM_SOCK" load >/dev/null
fi

# A client library that cannot speak ssh:// (docker-py, from PyPI) for the
# engine socket's e2e test. The registry is reachable from this namespace only.
PY="$DIR/venv/bin/python"
if ! "$PY" -c 'import docker' 2>/dev/null; then
    python3 -m venv "$DIR/venv" || die "python3 -m venv failed (apt-get install -y python3-venv)"
    "$DIR/venv/bin/pip" install -q --disable-pip-version-check 'docker==7.2.0' \
        || die "cannot install docker-py into $DIR/venv"
fi

cat > "$DIR/env.tmp" <<EOF
FWD_SANDBOX_DIR=$DIR
FWD_SANDBOX_RUN_ID=$RUN_ID
FWD_SANDBOX_REMOTE_NS=$NS
FWD_SANDBOX_DOCKER_SOCK=$SOCK
FWD_SANDBOX_IMAGE=$IMAGE
FWD_SANDBOX_SUBNET_PREFIX=$SUBNET_PREFIX
FWD_SANDBOX_PYTHON=$PY
FWD_SANDBOX_PODMAN_SOCK=$PM_SOCK
EOF
mv "$DIR/env.tmp" "$DIR/env"
echo "up.sh: sandbox ready: FWD_SANDBOX=$DIR/env (netns $NS, dockerd pid $(cat "$DIR/docker.pid"))"
