#!/usr/bin/env bash
# Installs fwd (fwdd, fwdctl, the UDP relay, service definitions, example
# configuration).
# Works from a source checkout (after `cargo build --release`) and from an
# unpacked release tarball (packaging/build-release.sh), where this script
# sits at the top next to bin/.
#
#   sudo ./install.sh                       # system-wide, Linux: systemd units
#   ./install.sh                            # macOS: PREFIX must be writable
#   DESTDIR=/tmp/stage ./install.sh         # staged install (packaging): nothing
#                                           # outside DESTDIR is touched, no user
#                                           # is created, no service reloaded
#
# Variables (all optional):
#   PREFIX               /usr/local
#   SYSCONFDIR           /etc               (config: $SYSCONFDIR/fwd/fwdd.toml)
#   SYSTEMD_UNIT_DIR     $PREFIX/lib/systemd/system   (searched by systemd)
#   SYSTEMD_USER_UNIT_DIR $PREFIX/lib/systemd/user
#   FWD_BIN_DIR          where fwdd and fwdctl are (default: bin/ of the
#                        tarball, else $CARGO_TARGET_DIR/release or target/release)
#                        and the UDP relays: fwd-udp-relay, fwd-udp-relay-linux-*
#                        (a checkout's: cargo rustc --release --locked -p fwd-udp-relay
#                        --bin fwd-udp-relay -- -C target-feature=+crt-static)
#   FWD_PLATFORM         linux or macos (default: from uname)
#   MANDIR               $PREFIX/share/man
#   BASH_COMPLETION_DIR  $PREFIX/share/bash-completion/completions
#   ZSH_COMPLETION_DIR   $PREFIX/share/zsh/site-functions
#   FISH_COMPLETION_DIR  $PREFIX/share/fish/vendor_completions.d
#                        (the directories each shell searches under a prefix)
#
# An existing configuration file is never overwritten: the shipped example
# always goes to $PREFIX/share/doc/fwd/fwdd.toml.example as well.
# Nothing is enabled or started; the script prints the next steps.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [ -x "$here/bin/fwdd" ]; then
  src=$here                       # unpacked release tarball
  default_bin=$here/bin
else
  src=$(cd "$here/.." && pwd)     # source checkout: packaging/install.sh
  default_bin=${CARGO_TARGET_DIR:-$src/target}/release
fi
bin_dir=${FWD_BIN_DIR:-$default_bin}

DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
SYSTEMD_UNIT_DIR=${SYSTEMD_UNIT_DIR:-$PREFIX/lib/systemd/system}
SYSTEMD_USER_UNIT_DIR=${SYSTEMD_USER_UNIT_DIR:-$PREFIX/lib/systemd/user}
MANDIR=${MANDIR:-$PREFIX/share/man}
BASH_COMPLETION_DIR=${BASH_COMPLETION_DIR:-$PREFIX/share/bash-completion/completions}
ZSH_COMPLETION_DIR=${ZSH_COMPLETION_DIR:-$PREFIX/share/zsh/site-functions}
FISH_COMPLETION_DIR=${FISH_COMPLETION_DIR:-$PREFIX/share/fish/vendor_completions.d}
case "${FWD_PLATFORM:-$(uname -s)}" in
  linux | Linux) platform=linux ;;
  macos | Darwin) platform=macos ;;
  *) echo "install.sh: unsupported platform ${FWD_PLATFORM:-$(uname -s)} (set FWD_PLATFORM=linux or macos)" >&2; exit 64 ;;
esac

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

for b in fwdd fwdctl; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found: build first (cargo build --release --locked) or set FWD_BIN_DIR"
done
[ -f "$src/config/fwdd.toml" ] || die "$src/config/fwdd.toml not found"

bindir=$PREFIX/bin
docdir=$PREFIX/share/doc/fwd
sharedir=$PREFIX/share/fwd

install -d -m 0755 "$DESTDIR$bindir" "$DESTDIR$docdir" "$DESTDIR$sharedir"
install -m 0755 "$bin_dir/fwdd" "$bin_dir/fwdctl" "$DESTDIR$bindir/"
install -m 0644 "$src/config/fwdd.toml" "$DESTDIR$docdir/fwdd.toml.example"
for d in README.md docs/operations.md docs/control-api.md; do
  if [ -f "$src/$d" ]; then install -m 0644 "$src/$d" "$DESTDIR$docdir/"; fi
done
say "installed $bindir/fwdd and $bindir/fwdctl"
# The UDP relays go beside fwdd, where it looks for them before it uploads
# one to a Docker host (a macOS tarball carries only Linux ones).
relays=()
for relay in "$bin_dir/fwd-udp-relay" "$bin_dir"/fwd-udp-relay-*; do
  if [ -f "$relay" ] && [ -x "$relay" ]; then relays+=("$relay"); fi
done
# (${relays[*]:-}: macOS's bash 3.2 calls an empty array unbound.)
if [ -n "${relays[*]:-}" ]; then
  install -m 0755 "${relays[@]}" "$DESTDIR$bindir/"
  say "installed the UDP relay in $bindir: ${relays[*]##*/}"
else
  say "no UDP relay (fwd-udp-relay) in $bin_dir: hosts' UDP ports will be unsupported"
fi

# Completions and manual pages, made by the binaries just installed (a
# tarball's completions/ and man/ are the same, made by its own binaries).
install -d -m 0755 "$DESTDIR$BASH_COMPLETION_DIR" "$DESTDIR$ZSH_COMPLETION_DIR" \
  "$DESTDIR$FISH_COMPLETION_DIR" "$DESTDIR$MANDIR/man1"
for b in fwdd fwdctl; do
  "$bin_dir/$b" completions bash >"$DESTDIR$BASH_COMPLETION_DIR/$b"
  "$bin_dir/$b" completions zsh >"$DESTDIR$ZSH_COMPLETION_DIR/_$b"
  "$bin_dir/$b" completions fish >"$DESTDIR$FISH_COMPLETION_DIR/$b.fish"
  chmod 0644 "$DESTDIR$BASH_COMPLETION_DIR/$b" "$DESTDIR$ZSH_COMPLETION_DIR/_$b" \
    "$DESTDIR$FISH_COMPLETION_DIR/$b.fish"
  "$bin_dir/$b" man "$DESTDIR$MANDIR/man1"
  # Readable by everyone whatever this shell's umask.
  chmod 0644 "$DESTDIR$MANDIR/man1/$b".1 "$DESTDIR$MANDIR/man1/$b"-*.1
done
say "installed the bash, zsh and fish completions and the manual pages (man fwdctl, man fwdd)"

# install_config DEST: the example configuration, only where none exists.
install_config() {
  local dest=$1
  install -d -m 0755 "$(dirname "$dest")"
  if [ -e "$dest" ]; then
    say "kept the existing ${dest#"$DESTDIR"} (example: $docdir/fwdd.toml.example)"
  else
    install -m 0644 "$src/config/fwdd.toml" "$dest"
    say "installed the example configuration as ${dest#"$DESTDIR"}: edit it"
  fi
}

if [ "$platform" = linux ]; then
  # The units name /usr/bin/fwdd (the Debian package's path): point them at
  # $PREFIX/bin instead.
  install -d -m 0755 "$DESTDIR$SYSTEMD_UNIT_DIR" "$DESTDIR$SYSTEMD_USER_UNIT_DIR"
  sed -e "s|/usr/bin/fwdd|$bindir/fwdd|g" -e "s|/usr/share/doc/fwd|$docdir|g" \
    "$src/systemd/fwdd.service" >"$DESTDIR$SYSTEMD_UNIT_DIR/fwdd.service"
  sed -e "s|/usr/bin/fwdd|$bindir/fwdd|g" -e "s|/usr/share/doc/fwd|$docdir|g" \
    "$src/systemd/fwdd-user.service" >"$DESTDIR$SYSTEMD_USER_UNIT_DIR/fwdd.service"
  chmod 0644 "$DESTDIR$SYSTEMD_UNIT_DIR/fwdd.service" "$DESTDIR$SYSTEMD_USER_UNIT_DIR/fwdd.service"
  say "installed $SYSTEMD_UNIT_DIR/fwdd.service and $SYSTEMD_USER_UNIT_DIR/fwdd.service"
  # The system unit reads /etc/fwd/fwdd.toml whatever SYSCONFDIR is.
  install_config "$DESTDIR$SYSCONFDIR/fwd/fwdd.toml"

  if [ -z "$DESTDIR" ]; then
    # A real install: the service user and its home (~/.ssh for the key and
    # known_hosts). Only when missing; never when staging into DESTDIR.
    if [ "$(id -u)" -eq 0 ]; then
      if ! getent passwd fwd >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/fwd --no-create-home \
          --shell /usr/sbin/nologin --comment "fwd daemon" fwd
        say "created the system user fwd (home /var/lib/fwd)"
      fi
      install -d -m 0700 -o fwd -g fwd /var/lib/fwd /var/lib/fwd/.ssh
      if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        # An upgrade: a running fwdd takes the new binary over in place.
        sh "$src/packaging/upgrade-running.sh" "$bindir" || true
      fi
      cat <<NEXT

Next steps (system service, see $docdir/operations.md):
  1. sudo -u fwd ssh-keygen -t ed25519 -N '' -f /var/lib/fwd/.ssh/id_ed25519
     and authorise the public key on each Docker host
  2. put each host's key into /var/lib/fwd/.ssh/known_hosts (checked out of band)
  3. edit $SYSCONFDIR/fwd/fwdd.toml; check it: fwdd check-config $SYSCONFDIR/fwd/fwdd.toml
  4. sudo systemctl enable --now fwdd && sudo fwdctl status
NEXT
    else
      say "not root: skipped creating the fwd user (only needed for the system unit)"
    fi
  fi
else
  # macOS: binaries and templates under PREFIX; the LaunchAgent and its config
  # belong to the user who runs this script (HOME).
  user=${USER:-$(id -un)}
  sed -e "s|/usr/local/bin/fwdd|$bindir/fwdd|g" "$src/launchd/com.fwd.fwdd.plist" \
    >"$DESTDIR$sharedir/com.fwd.fwdd.plist"
  sed -e "s|USER|$user|g" "$src/launchd/fwdd.newsyslog.conf" >"$DESTDIR$sharedir/fwdd.newsyslog.conf"
  chmod 0644 "$DESTDIR$sharedir/com.fwd.fwdd.plist" "$DESTDIR$sharedir/fwdd.newsyslog.conf"
  agents=$DESTDIR$HOME/Library/LaunchAgents
  install -d -m 0755 "$agents" "$DESTDIR$HOME/Library/Logs/fwd"
  sed -e "s|@HOME@|$HOME|g" "$DESTDIR$sharedir/com.fwd.fwdd.plist" >"$agents/com.fwd.fwdd.plist"
  chmod 0644 "$agents/com.fwd.fwdd.plist"
  say "installed $HOME/Library/LaunchAgents/com.fwd.fwdd.plist"
  install_config "$DESTDIR$HOME/.config/fwd/fwdd.toml"
  cat <<NEXT

Next steps (LaunchAgent, see $docdir/operations.md):
  1. edit ~/.config/fwd/fwdd.toml; check it: fwdd check-config ~/.config/fwd/fwdd.toml
  2. launchctl bootstrap gui/\$(id -u) ~/Library/LaunchAgents/com.fwd.fwdd.plist
  3. fwdctl status
  4. log rotation: sudo cp $sharedir/fwdd.newsyslog.conf /etc/newsyslog.d/fwd.conf
NEXT
fi
