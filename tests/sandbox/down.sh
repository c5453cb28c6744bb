#!/usr/bin/env bash
# Tear down a sandbox started by tests/sandbox/up.sh DIR, including anything the fwd-e2e
# harness left behind (per-test runner netns fwdn-<run id>-*, veths fw<run id>*, sshd
# daemons whose config lives under DIR). Usage: tests/sandbox/down.sh DIR. Idempotent.
set -euo pipefail

die() { echo "down.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 DIR"
[ -d "$1" ] || { echo "down.sh: $1 does not exist, nothing to do"; exit 0; }
DIR=$(cd "$1" && pwd)
[ "$DIR" != / ] || die "refusing DIR=/"

alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# wait_gone TIMEOUT_SECONDS PID... : poll until all are gone (or zombies)
wait_gone() {
    local deadline=$(( $(date +%s) + $1 )); shift
    local p left
    while :; do
        left=""
        for p in "$@"; do alive "$p" && left="$left $p"; done
        [ -z "$left" ] && return 0
        [ "$(date +%s)" -ge "$deadline" ] && { echo "$left"; return 1; }
        sleep 0.1
    done
}

RUN_ID=""
[ -f "$DIR/run_id" ] && RUN_ID=$(cat "$DIR/run_id")
SOCK="$DIR/docker.sock"

# 1. sshd daemons of the harness (their -f config is under DIR), with all their descendants.
pids_under_dir() {
    local p cmd
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        cmd=$(tr "\\0" " " 2>/dev/null < "/proc/$p/cmdline" || true)
        case "$cmd" in *sshd*"$DIR/"*) echo "$p";; esac
    done
}
descendants() {  # descendants PID...: prints the PIDs and all their descendants
    local all="$*" changed=1 p ppid
    while [ $changed = 1 ]; do
        changed=0
        for p in /proc/[0-9]*; do
            p=${p#/proc/}
            ppid=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || true)
            [ -n "$ppid" ] || continue
            case " $all " in *" $p "*) continue;; esac
            case " $all " in *" $ppid "*) all="$all $p"; changed=1;; esac
        done
    done
    echo "$all"
}
SSHD=$(pids_under_dir | tr '\n' ' ')
if [ -n "${SSHD// /}" ]; then
    # shellcheck disable=SC2086
    kill -STOP $SSHD 2>/dev/null || true
    # shellcheck disable=SC2086
    ALL=$(descendants $SSHD)
    # shellcheck disable=SC2086
    kill -KILL $ALL 2>/dev/null || true
    # shellcheck disable=SC2086
    wait_gone 10 $ALL >/dev/null || echo "down.sh: warning: sshd processes still alive" >&2
fi

# 2. containers, then dockerd (which stops its own containerd).
if [ -S "$SOCK" ] && docker -H "unix://$SOCK" version >/dev/null 2>&1; then
    ids=$(docker -H "unix://$SOCK" ps -aq || true)
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        docker -H "unix://$SOCK" rm -f $ids >/dev/null 2>&1 || true
    fi
fi
# Rootful Podman 5's addresses are allocated in a database of the machine's
# (/run/containers/networks/ipam.db, shared by every rootful Podman 5, by
# design): its containers are removed through it, or their addresses stay
# taken for good.
P5_SOCK="$DIR/podman5/podman.sock"
if [ -S "$P5_SOCK" ] && curl -sf --unix-socket "$P5_SOCK" http://engine/_ping >/dev/null 2>&1; then
    ids=$(docker -H "unix://$P5_SOCK" ps -aq || true)
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        docker -H "unix://$P5_SOCK" rm -f $ids >/dev/null 2>&1 || true
    fi
fi
# (dockerd 20.10, and dockerd 26 beside it)
for pidfile in "$DIR/docker.pid" "$DIR/docker26/docker.pid"; do
    [ -f "$pidfile" ] || continue
    DPID=$(cat "$pidfile")
    if alive "$DPID"; then
        kill -TERM "$DPID" 2>/dev/null || true
        if ! wait_gone 20 "$DPID" >/dev/null; then
            echo "down.sh: dockerd $DPID ignored SIGTERM, killing" >&2
            kill -KILL "$DPID" 2>/dev/null || true
            wait_gone 5 "$DPID" >/dev/null || true
        fi
    fi
done
# leftovers: containerd / shims / docker-proxy started for this DIR (never ourselves or our callers)
ANCESTORS=" "
a=$$
while [ -n "$a" ] && [ "$a" != 0 ]; do
    ANCESTORS="$ANCESTORS$a "
    a=$(awk '{print $4}' "/proc/$a/stat" 2>/dev/null || true)
done
LEFT=""
for p in /proc/[0-9]*; do
    p=${p#/proc/}
    cmd=$(tr "\\0" " " 2>/dev/null < "/proc/$p/cmdline" || true)
    case "$ANCESTORS" in *" $p "*) continue;; esac
    case "$cmd" in *"$DIR/"*) LEFT="$LEFT $p";; esac
done
if [ -n "${LEFT// /}" ]; then
    # shellcheck disable=SC2086
    ALL=$(descendants $LEFT)
    # shellcheck disable=SC2086
    kill -KILL $ALL 2>/dev/null || true
    # shellcheck disable=SC2086
    wait_gone 5 $ALL >/dev/null || true
fi

# 2b. the rootless engines' users of this run: all their processes (containers
# under their subordinate ids are descendants), then the users and their
# runtime directories.
pids_of_uid() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(awk '/^Uid:/ {print $2}' "$p/status" 2>/dev/null)" = "$1" ] && echo "${p#/proc/}"
    done
    return 0
}
if [ -n "$RUN_ID" ]; then
    for u in "fwd${RUN_ID}d" "fwd${RUN_ID}p" "fwd${RUN_ID}d26" "fwd${RUN_ID}p5"; do
        uid=$(id -u "$u" 2>/dev/null) || continue
        OWN=$(pids_of_uid "$uid" | tr '\n' ' ')
        if [ -n "${OWN// /}" ]; then
            # shellcheck disable=SC2086
            ALL=$(descendants $OWN)
            # shellcheck disable=SC2086
            kill -KILL $ALL 2>/dev/null || true
            # shellcheck disable=SC2086
            wait_gone 5 $ALL >/dev/null || true
        fi
        userdel --remove "$u" 2>/dev/null || userdel "$u" 2>/dev/null || true
        rm -rf "/run/user/$uid"
    done
fi

# The e2e harness binds engines at /run/podman for some sshds (their own
# mount namespaces): the empty mount point it made stays behind.
rmdir /run/podman 2>/dev/null || true

# 3. network namespaces and veths of this run.
if [ -n "$RUN_ID" ]; then
    for ns in $(ip netns list | awk '{print $1}'); do
        case "$ns" in "fwdr-$RUN_ID"|"fwdn-$RUN_ID-"*) ip netns del "$ns" 2>/dev/null || true;; esac
    done
    for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
        case "$l" in "fw$RUN_ID"*) ip link del "$l" 2>/dev/null || true;; esac
    done
fi

# 4. the directory (unmount anything dockerd left mounted under it first).
if grep -q " $DIR/" /proc/mounts; then
    awk -v d="$DIR/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
fi
rm -rf "$DIR"
echo "down.sh: sandbox $DIR removed"
