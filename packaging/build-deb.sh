#!/usr/bin/env bash
# Builds a Debian package from the workspace without debhelper: stage the
# tree, write DEBIAN/, `dpkg-deb --build`. Output: dist/fwd_<ver>-<rev>_<arch>.deb
#
#   packaging/build-deb.sh                       # cargo build --release --locked
#   FWD_BIN_DIR=DIR packaging/build-deb.sh       # package prebuilt binaries:
#                      fwdd, fwdctl and a static fwd-udp-relay
#   DIST=DIR           where the .deb goes (default: dist/ in the checkout)
#   FWD_DEB_REVISION   Debian revision (default 1)
#
# Layout (what the units expect):
#   /usr/bin/fwdd, /usr/bin/fwdctl
#   /usr/bin/fwd-udp-relay                 (static; fwdd looks beside itself
#                                          and uploads it to the Docker host)
#   /usr/lib/systemd/system/fwdd.service   (User=fwd, --config /etc/fwd/fwdd.toml)
#   /usr/lib/systemd/user/fwdd.service     (--config ~/.config/fwd/fwdd.toml)
#   /etc/fwd/fwdd.toml                     (conffile: never clobbered by upgrades)
#   /usr/share/doc/fwd/                    (README, operations guide, control API)
#   /usr/share/fwd/upgrade-running.sh      (postinst: fwdctl upgrade, else restart)
#   /usr/share/bash-completion/completions/{fwdd,fwdctl}, /usr/share/zsh/
#   vendor-completions/_{fwdd,fwdctl}, /usr/share/fish/vendor_completions.d/
#   {fwdd,fwdctl}.fish, /usr/share/man/man1/fwdctl.1.gz, fwdctl-status.1.gz, ...
#                                          (made by the packaged binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
umask 022
# shellcheck source=SCRIPTDIR/relay.sh
. packaging/relay.sh

command -v dpkg-deb >/dev/null || { echo "build-deb.sh: dpkg-deb not found (apt-get install dpkg)" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || { echo "build-deb.sh: no version in Cargo.toml" >&2; exit 1; }
deb_version=$version-${FWD_DEB_REVISION:-1}
arch=$(dpkg --print-architecture)
dist=${DIST:-$root/dist}

if [ -n "${FWD_BIN_DIR:-}" ]; then
  bin_dir=$FWD_BIN_DIR
else
  cargo build --release --locked -p fwdd -p fwdctl
  build_static_relay
  bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
fi
for b in fwdd fwdctl; do
  [ -x "$bin_dir/$b" ] || { echo "build-deb.sh: $bin_dir/$b not found" >&2; exit 1; }
done
relay=$bin_dir/fwd-udp-relay
[ -x "$relay" ] || { echo "build-deb.sh: $relay not found: build it with $relay_build_command" >&2; exit 1; }
is_static "$relay" || { echo "build-deb.sh: $relay is not a static executable: build it with $relay_build_command" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/fwd
install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/systemd/system" \
  "$stage/usr/lib/systemd/user" "$stage/etc/fwd" "$stage/usr/share/doc/fwd" \
  "$stage/usr/share/fwd"

for b in fwdd fwdctl fwd-udp-relay; do
  install -m 0755 "$bin_dir/$b" "$stage/usr/bin/$b"
  strip --strip-unneeded "$stage/usr/bin/$b" 2>/dev/null || true
done
# The units already name /usr/bin/fwdd and /usr/share/doc/fwd.
install -m 0644 systemd/fwdd.service "$stage/usr/lib/systemd/system/fwdd.service"
install -m 0644 systemd/fwdd-user.service "$stage/usr/lib/systemd/user/fwdd.service"
install -m 0644 config/fwdd.toml "$stage/etc/fwd/fwdd.toml"
install -m 0755 packaging/upgrade-running.sh "$stage/usr/share/fwd/upgrade-running.sh"
install -m 0644 README.md docs/operations.md docs/control-api.md packaging/debian/copyright \
  "$stage/usr/share/doc/fwd/"

# Completions and manual pages from the binaries being packaged (prebuilt
# ones too), so they describe exactly those.
bash_dir=$stage/usr/share/bash-completion/completions
zsh_dir=$stage/usr/share/zsh/vendor-completions
fish_dir=$stage/usr/share/fish/vendor_completions.d
man_dir=$stage/usr/share/man/man1
install -d -m 0755 "$bash_dir" "$zsh_dir" "$fish_dir" "$man_dir"
for b in fwdd fwdctl; do
  "$stage/usr/bin/$b" completions bash >"$bash_dir/$b"
  "$stage/usr/bin/$b" completions zsh >"$zsh_dir/_$b"
  "$stage/usr/bin/$b" completions fish >"$fish_dir/$b.fish"
  "$stage/usr/bin/$b" man "$man_dir"
done
chmod 0644 "$bash_dir"/* "$zsh_dir"/* "$fish_dir"/* "$man_dir"/*
# Debian policy: manual pages compressed, without a timestamp in the header.
gzip -9n "$man_dir"/*.1

installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$deb_version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
  packaging/debian/control.in >"$stage/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$stage/DEBIAN/conffiles"
for s in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$s" "$stage/DEBIAN/$s"
done

mkdir -p "$dist"
deb=$dist/fwd_${deb_version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
