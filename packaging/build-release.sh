#!/usr/bin/env bash
# Builds a release tarball: dist/fwd-<version>-<target>.tar.gz (+ .sha256)
# holding the stripped binaries, the systemd units, the launchd agent, the
# example configuration, the docs, install.sh, and the shell completions
# (completions/{bash,zsh,fish}/) and manual pages (man/man1/) the binaries make.
#
#   packaging/build-release.sh            # cargo build --release --locked
#   FWD_BIN_DIR=DIR packaging/build-release.sh   # package prebuilt binaries:
#                 fwdd, fwdctl and, on Linux, a static fwd-udp-relay
#   DIST=DIR      where the tarball goes (default: dist/ in the checkout)
#   FWD_LINUX_RELAYS=DIR  more static relays, built elsewhere, to carry in
#                 bin/ (fwd-udp-relay-linux-<uname -m>)
#   FWD_PLATFORM  linux or macos (default: from uname)
#
# The binaries are self-contained (no runtime dependency besides libc and
# the OpenSSH client), so the tarball is all a host needs.
#
# The UDP relay goes to the Docker host (packaging/relay.sh says why it is
# static). A Linux tarball carries the one built here, stripped, in bin/
# beside fwdd under both names fwdd looks for: fwd-udp-relay and
# fwd-udp-relay-linux-<arch> (one file, hard-linked).
# A macOS release must add the Linux relays, built on Linux (there is no
# cross toolchain for them here): bin/fwd-udp-relay-linux-* of the Linux
# tarballs of the same version, their directory as FWD_LINUX_RELAYS.
# Without them the macOS tarball is still built, with a warning, and its
# fwdd reports the hosts' UDP ports as unsupported.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# shellcheck source=SCRIPTDIR/relay.sh
. packaging/relay.sh

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || { echo "build-release.sh: no version in Cargo.toml" >&2; exit 1; }
target=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
target=${FWD_TARGET:-${target:-$(uname -m)-$(uname -s | tr '[:upper:]' '[:lower:]')}}
dist=${DIST:-$root/dist}
case "${FWD_PLATFORM:-$(uname -s)}" in
  linux | Linux) platform=linux ;;
  macos | Darwin) platform=macos ;;
  *) echo "build-release.sh: unsupported platform ${FWD_PLATFORM:-$(uname -s)} (set FWD_PLATFORM=linux or macos)" >&2; exit 64 ;;
esac

if [ -n "${FWD_BIN_DIR:-}" ]; then
  bin_dir=$FWD_BIN_DIR
else
  cargo build --release --locked -p fwdd -p fwdctl
  if [ "$platform" = linux ]; then build_static_relay; fi
  bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
fi
# The UDP relays, checked before anything is staged.
if [ "$platform" = linux ]; then
  relay=$bin_dir/fwd-udp-relay
  [ -x "$relay" ] || { echo "build-release.sh: $relay not found: build it with $relay_build_command" >&2; exit 1; }
  is_static "$relay" || { echo "build-release.sh: $relay is not a static executable: build it with $relay_build_command" >&2; exit 1; }
fi
linux_relays=()
if [ -n "${FWD_LINUX_RELAYS:-}" ]; then
  for relay in "$FWD_LINUX_RELAYS"/fwd-udp-relay-linux-*; do
    [ -f "$relay" ] || { echo "build-release.sh: no fwd-udp-relay-linux-* in $FWD_LINUX_RELAYS" >&2; exit 1; }
    is_static "$relay" || { echo "build-release.sh: $relay is not a static executable" >&2; exit 1; }
    linux_relays+=("$relay")
  done
fi

name=fwd-$version-$target
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/$name
install -d -m 0755 "$stage/bin" "$stage/systemd" "$stage/launchd" "$stage/config" "$stage/docs" \
  "$stage/packaging"
for b in fwdd fwdctl; do
  install -m 0755 "$bin_dir/$b" "$stage/bin/$b"
  # Line tables are kept in target/ for backtraces; the shipped binary is lean.
  if command -v strip >/dev/null; then strip "$stage/bin/$b"; fi
done

# The UDP relays, beside fwdd: where it looks for them.
if [ "$platform" = linux ]; then
  install -m 0755 "$bin_dir/fwd-udp-relay" "$stage/bin/fwd-udp-relay"
  if command -v strip >/dev/null; then strip "$stage/bin/fwd-udp-relay"; fi
  ln "$stage/bin/fwd-udp-relay" "$stage/bin/fwd-udp-relay-linux-$(relay_arch)"
fi
# (The expansion guards an empty array: macOS's bash 3.2 calls it unbound.)
for relay in ${linux_relays[@]+"${linux_relays[@]}"}; do
  # The one built here stays.
  [ -e "$stage/bin/${relay##*/}" ] || install -m 0755 "$relay" "$stage/bin/${relay##*/}"
done
carried=
for relay in "$stage"/bin/fwd-udp-relay*; do
  if [ -e "$relay" ]; then carried=yes; fi
done
if [ -z "$carried" ]; then
  echo "build-release.sh: warning: no UDP relay in the tarball (set FWD_LINUX_RELAYS): its fwdd reports UDP ports as unsupported" >&2
fi
install -m 0644 systemd/fwdd.service systemd/fwdd-user.service "$stage/systemd/"
install -m 0644 launchd/com.fwd.fwdd.plist launchd/fwdd.newsyslog.conf "$stage/launchd/"
install -m 0644 config/fwdd.toml "$stage/config/"
install -m 0644 docs/operations.md docs/control-api.md "$stage/docs/"
install -m 0644 README.md "$stage/"
install -m 0755 packaging/install.sh "$stage/install.sh"
# install.sh runs it after an install onto a running service.
install -m 0755 packaging/upgrade-running.sh "$stage/packaging/upgrade-running.sh"
# Made by the binaries being shipped, so they describe exactly those.
install -d -m 0755 "$stage/completions/bash" "$stage/completions/zsh" "$stage/completions/fish" \
  "$stage/man/man1"
for b in fwdd fwdctl; do
  "$stage/bin/$b" --version >/dev/null 2>&1 || {
    echo "build-release.sh: $bin_dir/$b does not run here, and it makes the completions and pages: build on the target platform" >&2
    exit 1
  }
  "$stage/bin/$b" completions bash >"$stage/completions/bash/$b"
  "$stage/bin/$b" completions zsh >"$stage/completions/zsh/_$b"
  "$stage/bin/$b" completions fish >"$stage/completions/fish/$b.fish"
  "$stage/bin/$b" man "$stage/man/man1"
done
chmod 0644 "$stage"/completions/*/* "$stage"/man/man1/*

mkdir -p "$dist"
tarball=$dist/$name.tar.gz
# Reproducible-ish: fixed owner and sorted names.
tar -C "$work" --owner=0 --group=0 --numeric-owner --sort=name -czf "$tarball" "$name" 2>/dev/null ||
  tar -C "$work" -czf "$tarball" "$name" # bsdtar (macOS) lacks those options
(cd "$dist" && { sha256sum "$name.tar.gz" 2>/dev/null || shasum -a 256 "$name.tar.gz"; } >"$name.tar.gz.sha256")
echo "$tarball"
