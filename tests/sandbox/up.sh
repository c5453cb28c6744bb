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

# wait_engine SOCK LOG NAME: until the engine on SOCK answers.
wait_engine() {
    local deadline=$(( $(date +%s) + 60 ))
    until curl -sf --unix-socket "$1" http://engine/_ping >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "up.sh: $3 did not come up; tail of $2:" >&2
            tail -n 30 "$2" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
}

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
    wait_engine "$PM_SOCK" "$PM/service.log" "podman's API"
fi
if ! docker -H "unix://$PM_SOCK" image inspect "$IMAGE" >/dev/null 2>&1; then
    "${DOCKER[@]}" save "$IMAGE" | docker -H "unix://$PM_SOCK" load >/dev/null
fi

# Rootless engines: rootless Docker (Debian's rootlesskit and docker.io's
# dockerd-rootless.sh) and rootless Podman, each run by a user of this run's
# own (subordinate ids, a runtime directory /run/user/UID as systemd-logind
# makes) in the remote namespace, where its published ports are bound. Their
# storage is under DIR (down.sh ends whatever names DIR, and removes it).
for bin in rootlesskit slirp4netns newuidmap setpriv useradd; do
    command -v "$bin" >/dev/null || die "missing $bin (apt-get install -y rootlesskit slirp4netns uidmap)"
done
# Their slirp4netns opens /dev/net/tun as the user (0666 on most systems).
chmod 0666 /dev/net/tun
# Rootless users reach their storage under DIR (and their ssh keys, in tests).
chmod 0711 "$DIR"

# rootless_user NAME: creates NAME (once) with subordinate ids and a runtime
# directory; prints its uid.
rootless_user() {
    if ! id -u "$1" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/sh "$1" >/dev/null
        # A new account's password is locked; sshd without PAM then refuses
        # even its keys.
        usermod -p '*' "$1"
    fi
    local uid last
    uid=$(id -u "$1")
    for f in /etc/subuid /etc/subgid; do
        touch "$f"
        if ! grep -q "^$1:" "$f"; then
            last=$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' "$f")
            echo "$1:$last:65536" >> "$f"
        fi
    done
    install -d -o "$uid" -g "$(id -g "$1")" -m 0700 "/run/user/$uid"
    echo "$uid"
}

# as_user NAME UID CMD...: CMD as NAME in the remote namespace, detached,
# with the environment a login session would have.
as_user() {
    local name=$1 uid=$2
    shift 2
    setsid nsenter --net="/var/run/netns/$NS" setpriv --reuid="$uid" --regid="$(id -g "$name")" --init-groups \
        env -i HOME="$(getent passwd "$name" | cut -d: -f6)" USER="$name" LOGNAME="$name" \
        PATH=/usr/share/docker.io/contrib:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        XDG_RUNTIME_DIR="/run/user/$uid" "$@"
}

RD_USER="fwd${RUN_ID}d"
RD_UID=$(rootless_user "$RD_USER")
RD_SOCK="/run/user/$RD_UID/docker.sock"
RD="$DIR/rootless-docker"
if ! curl -sf --unix-socket "$RD_SOCK" http://engine/_ping >/dev/null 2>&1; then
    install -d -o "$RD_UID" -g "$(id -g "$RD_USER")" -m 0700 "$RD"
    rm -f "$RD_SOCK"
    as_user "$RD_USER" "$RD_UID" dockerd-rootless.sh --data-root "$RD/data" \
        </dev/null >"$DIR/rootless-docker.log" 2>&1 &
    wait_engine "$RD_SOCK" "$DIR/rootless-docker.log" "rootless dockerd"
fi
if ! docker -H "unix://$RD_SOCK" image inspect "$IMAGE" >/dev/null 2>&1; then
    "${DOCKER[@]}" save "$IMAGE" | docker -H "unix://$RD_SOCK" load >/dev/null
fi

RP_USER="fwd${RUN_ID}p"
RP_UID=$(rootless_user "$RP_USER")
RP_SOCK="/run/user/$RP_UID/podman/podman.sock"
RP="$DIR/rootless-podman"
if ! curl -sf --unix-socket "$RP_SOCK" http://engine/_ping >/dev/null 2>&1; then
    install -d -o "$RP_UID" -g "$(id -g "$RP_USER")" -m 0700 "$RP" "/run/user/$RP_UID/podman"
    install -m 0644 "$PM/containers.conf" "$RP/containers.conf"
    rm -f "$RP_SOCK"
    as_user "$RP_USER" "$RP_UID" env CONTAINERS_CONF="$RP/containers.conf" \
        podman --root "$RP/root" system service --time=0 "unix://$RP_SOCK" \
        </dev/null >"$DIR/rootless-podman.log" 2>&1 &
    wait_engine "$RP_SOCK" "$DIR/rootless-podman.log" "rootless podman"
fi
if ! docker -H "unix://$RP_SOCK" image inspect "$IMAGE" >/dev/null 2>&1; then
    "${DOCKER[@]}" save "$IMAGE" | docker -H "unix://$RP_SOCK" load >/dev/null
fi

# Today's engines beside those: Debian 13's dockerd 26 and Podman 5, unpacked
# under /opt/fwd-engines by scripts/install-deps.sh (the system's packages stay
# Debian 12's), rootful and rootless, in the same remote namespace (sshd must
# reach their containers and published ports as it does the others').
ENGINES=/opt/fwd-engines
D26_BIN="$ENGINES/docker-26/usr/sbin"
P5="$ENGINES/podman-5/usr"
if [ ! -x "$D26_BIN/dockerd" ] || [ ! -x "$P5/bin/podman" ]; then
    die "missing $ENGINES (Debian 13's dockerd 26 and Podman 5): run scripts/install-deps.sh"
fi

# dockerd 26, rootful. Two dockerds in one namespace would fight: each names
# its bridge docker0 and, at start, deletes and rebuilds the DOCKER iptables
# chains the other's rules are in. So this one gets a bridge of its own
# (made here, addressed out of both the per-test /30s and Podman's ranges)
# and leaves iptables alone: its published ports are then served by its
# docker-proxy, which is what answers on loopback anyway, and the host reaches
# its containers' addresses over the bridge.
D26="$DIR/docker26"
D26_SOCK="$D26/docker.sock"
if ! curl -sf --unix-socket "$D26_SOCK" http://engine/_ping >/dev/null 2>&1; then
    mkdir -p "$D26"
    echo '{}' > "$D26/daemon.json"
    if ! ip -n "$NS" link show fwd26br0 >/dev/null 2>&1; then
        ip -n "$NS" link add fwd26br0 type bridge
        ip -n "$NS" addr add 172.30.0.1/16 dev fwd26br0
    fi
    ip -n "$NS" link set fwd26br0 up
    [ -f "$D26/docker.pid" ] && alive "$(cat "$D26/docker.pid")" && kill "$(cat "$D26/docker.pid")"
    rm -f "$D26/docker.pid" "$D26_SOCK"
    setsid nsenter --net="/var/run/netns/$NS" env PATH="$D26_BIN:$PATH" "$D26_BIN/dockerd" \
        -H "unix://$D26_SOCK" \
        --config-file "$D26/daemon.json" \
        --data-root "$D26/data" \
        --exec-root "$D26/exec" \
        --pidfile "$D26/docker.pid" \
        --bridge fwd26br0 --iptables=false \
        --default-address-pool base=172.31.0.0/16,size=24 \
        --userland-proxy-path "$D26_BIN/docker-proxy" \
        </dev/null >"$D26/dockerd.log" 2>&1 &
    wait_engine "$D26_SOCK" "$D26/dockerd.log" "dockerd 26"
fi
if ! docker -H "unix://$D26_SOCK" image inspect "$IMAGE" >/dev/null 2>&1; then
    "${DOCKER[@]}" save "$IMAGE" | docker -H "unix://$D26_SOCK" load >/dev/null
fi

# Podman 5's configuration: its own helpers, Debian 12's runc (trixie's crun
# refuses this machine's hybrid cgroups: "cgroups in hybrid mode not
# supported"), iptables rules (netavark defaults to nft, not installed here),
# file locks (rootful Podman 4.3 holds the machine-wide shared-memory ones).
# Rootful, its default network has a bridge and a subnet of its own: Podman
# 4.3's CNI network is 10.88.0.0/16 on cni-podman0, and a rootless Podman 5's
# pasta names its tap after an interface of this namespace.
# p5_conf [NETWORK_LINES [ENGINE_LINES]]: Podman 5's containers.conf.
p5_conf() {
    cat <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
seccomp_profile = "$P5/share/containers/seccomp.json"
[network]
network_backend = "netavark"
firewall_driver = "iptables"
${1:-}
[engine]
events_logger = "file"
cgroup_manager = "cgroupfs"
conmon_path = ["$P5/bin/conmon"]
helper_binaries_dir = ["$P5/lib/podman", "$P5/libexec/podman", "$P5/bin"]
runtime = "runc"
${2:-}
[engine.runtimes]
runc = ["/usr/sbin/runc"]
CONF
}

PM5="$DIR/podman5"
PM5_SOCK="$PM5/podman.sock"
if ! curl -sf --unix-socket "$PM5_SOCK" http://engine/_ping >/dev/null 2>&1; then
    mkdir -p "$PM5/networks"
    p5_conf "network_config_dir = \"$PM5/networks\"
default_subnet_pools = [{\"base\" = \"10.251.0.0/16\", \"size\" = 24}]" \
        'lock_type = "file"' > "$PM5/containers.conf"
    cat > "$PM5/networks/podman.json" <<'NET'
{
  "name": "podman",
  "id": "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9",
  "driver": "bridge",
  "network_interface": "fwdp5br0",
  "subnets": [{"subnet": "10.250.0.0/24", "gateway": "10.250.0.1"}],
  "ipv6_enabled": false,
  "internal": false,
  "dns_enabled": false,
  "ipam_options": {"driver": "host-local"}
}
NET
    rm -f "$PM5_SOCK"
    CONTAINERS_CONF="$PM5/containers.conf" PODMAN_IGNORE_CGROUPSV1_WARNING=1 \
        setsid nsenter --net="/var/run/netns/$NS" \
        "$P5/bin/podman" --root "$PM5/root" --runroot "$PM5/run" --tmpdir "$PM5/tmp" \
        system service --time=0 "unix://$PM5_SOCK" \
        </dev/null >"$PM5/service.log" 2>&1 &
    wait_engine "$PM5_SOCK" "$PM5/service.log" "podman 5's API"
fi
if ! docker -H "unix://$PM5_SOCK" image inspect "$IMAGE" >/dev/null 2>&1; then
    "${DOCKER[@]}" save "$IMAGE" | docker -H "unix://$PM5_SOCK" load >/dev/null
fi

# Rootless dockerd 26: docker.io 26's own dockerd-rootless.sh (under Debian
# 12's rootlesskit), finding dockerd 26 first on its PATH. (Its published
# ports go through rootlesskit-docker-proxy, Debian 12's, which dockerd 26
# still takes when no --userland-proxy-path is given.)
RD26_USER="fwd${RUN_ID}d26"
RD26_UID=$(rootless_user "$RD26_USER")
RD26_SOCK="/run/user/$RD26_UID/docker.sock"
RD26="$DIR/rootless-docker26"
if ! curl -sf --unix-socket "$RD26_SOCK" http://engine/_ping >/dev/null 2>&1; then
    install -d -o "$RD26_UID" -g "$(id -g "$RD26_USER")" -m 0700 "$RD26"
    rm -f "$RD26_SOCK"
    as_user "$RD26_USER" "$RD26_UID" env PATH="$D26_BIN:$ENGINES/docker-26/usr/share/docker.io/contrib:/usr/bin:/bin:/usr/sbin:/sbin" \
        dockerd-rootless.sh --data-root "$RD26/data" \
        </dev/null >"$DIR/rootless-docker26.log" 2>&1 &
    wait_engine "$RD26_SOCK" "$DIR/rootless-docker26.log" "rootless dockerd 26"
fi
if ! docker -H "unix://$RD26_SOCK" image inspect "$IMAGE" >/dev/null 2>&1; then
    "${DOCKER[@]}" save "$IMAGE" | docker -H "unix://$RD26_SOCK" load >/dev/null
fi

# Rootless Podman 5: its containers' network is pasta's (the compat API's
# default bridge lives in a namespace pasta connects; rootlessport binds the
# published ports in this one). pasta copies the addresses and routes of the
# host's interface with the default route into that namespace; this one has
# no default route, and copying a bridge with no port fails ("Couldn't set
# IPv4 route(s) in guest: Invalid argument"), so pasta is given an interface
# as a host's uplink would be: up, with an address (what 169.254.1.2, pasta's
# address for the host, reaches). A default route here would change what
# every test in this namespace sees for an address nobody has, so instead
# pasta is told the gateway to route through, as it would copy a real
# uplink's default route: without one, containers cannot reach 169.254.1.2
# at all ("Network is unreachable").
PASTA_UPLINK_IP=10.252.0.1
if ! ip -n "$NS" link show fwdup0 >/dev/null 2>&1; then
    ip -n "$NS" link add fwdup0 type bridge
    ip -n "$NS" addr add "$PASTA_UPLINK_IP/24" dev fwdup0
fi
ip -n "$NS" link set fwdup0 up
RP5_USER="fwd${RUN_ID}p5"
RP5_UID=$(rootless_user "$RP5_USER")
RP5_SOCK="/run/user/$RP5_UID/podman/podman.sock"
RP5="$DIR/rootless-podman5"
if ! curl -sf --unix-socket "$RP5_SOCK" http://engine/_ping >/dev/null 2>&1; then
    install -d -o "$RP5_UID" -g "$(id -g "$RP5_USER")" -m 0700 "$RP5" "/run/user/$RP5_UID/podman"
    p5_conf 'pasta_options = ["--interface", "fwdup0", "--gateway", "10.252.0.254"]' \
        > "$RP5/containers.conf"
    chmod 0644 "$RP5/containers.conf"
    rm -f "$RP5_SOCK"
    as_user "$RP5_USER" "$RP5_UID" env CONTAINERS_CONF="$RP5/containers.conf" PODMAN_IGNORE_CGROUPSV1_WARNING=1 \
        "$P5/bin/podman" --root "$RP5/root" system service --time=0 "unix://$RP5_SOCK" \
        </dev/null >"$DIR/rootless-podman5.log" 2>&1 &
    wait_engine "$RP5_SOCK" "$DIR/rootless-podman5.log" "rootless podman 5"
fi
if ! docker -H "unix://$RP5_SOCK" image inspect "$IMAGE" >/dev/null 2>&1; then
    "${DOCKER[@]}" save "$IMAGE" | docker -H "unix://$RP5_SOCK" load >/dev/null
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
FWD_SANDBOX_ROOTLESS_DOCKER_USER=$RD_USER
FWD_SANDBOX_ROOTLESS_DOCKER_SOCK=$RD_SOCK
FWD_SANDBOX_ROOTLESS_PODMAN_USER=$RP_USER
FWD_SANDBOX_ROOTLESS_PODMAN_SOCK=$RP_SOCK
FWD_SANDBOX_DOCKER26_SOCK=$D26_SOCK
FWD_SANDBOX_PODMAN5_SOCK=$PM5_SOCK
FWD_SANDBOX_ROOTLESS_DOCKER26_USER=$RD26_USER
FWD_SANDBOX_ROOTLESS_DOCKER26_SOCK=$RD26_SOCK
FWD_SANDBOX_ROOTLESS_PODMAN5_USER=$RP5_USER
FWD_SANDBOX_ROOTLESS_PODMAN5_SOCK=$RP5_SOCK
FWD_SANDBOX_PASTA_UPLINK_IP=$PASTA_UPLINK_IP
EOF
mv "$DIR/env.tmp" "$DIR/env"
echo "up.sh: sandbox ready: FWD_SANDBOX=$DIR/env (netns $NS, dockerd pid $(cat "$DIR/docker.pid"))"
