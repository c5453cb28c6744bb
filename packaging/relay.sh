# shellcheck shell=bash
# Sourced by build-release.sh and build-deb.sh: the UDP relay they ship.
#
# fwd-udp-relay runs on the Docker host, not on the runner: fwdd uploads it
# over ssh. The host's glibc may be older than the build machine's, so the
# relay is linked statically (crt-static on the gnu target links glibc in,
# as a static-pie). fwdd looks for it beside its own binary: as
# fwd-udp-relay-linux-<uname -m> for any Linux host of that CPU, and as
# fwd-udp-relay for a host of fwdd's own platform.

# shellcheck disable=SC2034 # used by the scripts that source this file
relay_build_command='cargo rustc --release --locked -p fwd-udp-relay --bin fwd-udp-relay -- -C target-feature=+crt-static'

build_static_relay() {
  cargo rustc --release --locked -p fwd-udp-relay --bin fwd-udp-relay -- -C target-feature=+crt-static
}

# is_static FILE: a little-endian ELF executable without an interpreter
# (PT_INTERP, the dynamic loader), so it runs whatever the host's glibc.
# Read with od, which every platform has (macOS has no readelf, and older
# `file` calls a static-pie "dynamically linked").
is_static() {
  local f=$1 magic phoff phentsize phnum i
  [ -f "$f" ] || return 1
  magic=$(od -An -tx1 -N6 "$f" | tr -d ' \n')
  case "$magic" in
    7f454c460201) # 64-bit
      phoff=$(od -An -tu8 -j32 -N8 "$f") phentsize=$(od -An -tu2 -j54 -N2 "$f")
      phnum=$(od -An -tu2 -j56 -N2 "$f") ;;
    7f454c460101) # 32-bit
      phoff=$(od -An -tu4 -j28 -N4 "$f") phentsize=$(od -An -tu2 -j42 -N2 "$f")
      phnum=$(od -An -tu2 -j44 -N2 "$f") ;;
    *) return 1 ;;
  esac
  for ((i = 0; i < phnum; i++)); do
    [ $(($(od -An -tu4 -j $((phoff + i * phentsize)) -N4 "$f"))) -ne 3 ] || return 1
  done
}

# The CPU as the host's `uname -m` says it, as fwdd names relays
# (arm64 and amd64 as aarch64 and x86_64).
relay_arch() {
  local arch
  arch=$(uname -m | tr '[:upper:]' '[:lower:]')
  case "$arch" in
    arm64) echo aarch64 ;;
    amd64) echo x86_64 ;;
    *) echo "$arch" ;;
  esac
}
