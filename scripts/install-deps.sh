#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian/Ubuntu machine:
# a real sshd, a real dockerd (with containerd, runc), a static busybox for the
# test image, and the network tools for the namespaces. Idempotent.
set -euo pipefail

missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
# (grep without -q: under pipefail an early exit would SIGPIPE busybox and
# make a present busybox look missing)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x httpd >/dev/null || missing+=(busybox-static)
command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || missing+=(iptables)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || missing+=(iproute2)
command -v nsenter >/dev/null || missing+=(util-linux)
command -v curl >/dev/null || missing+=(curl)
# The burst test's server is the host's own python3, bind-mounted into a container.
[ -x /usr/bin/python3 ] || missing+=(python3)
# The engine socket's client-library test runs docker-py in a venv.
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# The engine socket's compose test runs the distribution's Compose (v1).
command -v docker-compose >/dev/null || missing+=(docker-compose)
# Packaging tests: unit verification, .deb building, script linting.
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
command -v shellcheck >/dev/null || missing+=(shellcheck)
# The manual pages fwdctl and fwdd make are rendered as man reads them.
command -v man >/dev/null || missing+=(man-db)
# The other engines of the e2e tests: Podman (rootful and rootless), rootless
# Docker (docker.io's dockerd-rootless.sh under rootlesskit); rootless needs
# subordinate ids and user-mode networking; Podman's bridge, the CNI plugins.
command -v podman >/dev/null || missing+=(podman)
command -v rootlesskit >/dev/null || missing+=(rootlesskit)
command -v newuidmap >/dev/null || missing+=(uidmap)
command -v slirp4netns >/dev/null || missing+=(slirp4netns)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
# The CI step's tests: the GitHub Action's entry points run under node, and
# the action's and the GitLab component's YAML are read with python3's yaml.
command -v node >/dev/null || missing+=(nodejs)
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
# The alert rules' checks and unit tests, and the metrics e2e test's scraper.
command -v promtool >/dev/null || missing+=(prometheus)
# The UDP benchmark's baseline: socat at both ends of a separate ssh -L.
command -v socat >/dev/null || missing+=(socat)

# Today's engines run from their own directory (below) with Debian 13's C
# library, set as their interpreter.
command -v patchelf >/dev/null || missing+=(patchelf)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${missing[*]}; run this script as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Today's engines beside the system's, for the e2e matrix: Debian 13's dockerd
# 26.1 (API 1.45) and Podman 5.4 with the helpers it runs (conmon, netavark,
# aardvark-dns, pasta) and the libraries Debian 12 has too old (Podman 5 needs
# glibc 2.38). Nothing is installed: apt, with a configuration of its own that
# knows only trixie (the system's sources and lists are untouched), downloads
# the .debs and checks them against trixie's signed Release; dpkg -x unpacks
# them under ENGINES. Podman's binaries get trixie's ld.so as their
# interpreter and its libraries as their RPATH, so what they run (iptables,
# newuidmap, runc) keeps the system's. Debian 12's runc runs Podman 5's
# containers: trixie's crun refuses this machine's hybrid cgroups. Done once:
# the stamp names what is unpacked.
ENGINES=/opt/fwd-engines
ENGINES_STAMP="$ENGINES/.unpacked-v1"
if [ ! -f "$ENGINES_STAMP" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: $ENGINES is missing (Docker 26, Podman 5 for the e2e tests); run this script as root" >&2
    exit 1
  fi
  echo "install-deps: fetching Debian 13's dockerd 26 and Podman 5 into $ENGINES" >&2
  cache=/var/cache/fwd-engines
  mkdir -p "$cache/lists/partial" "$cache/archives/partial" "$cache/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$cache/trixie.list"
  apt_trixie=(apt-get -qq
    -o Dir::Etc::SourceList="$cache/trixie.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$cache/lists" -o Dir::Cache="$cache"
    -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
    -o APT::Sandbox::User=root)
  "${apt_trixie[@]}" update
  podman_debs=(podman conmon netavark aardvark-dns passt golang-github-containers-common
    libc6 libgpgme11t64 libassuan9 libgpg-error0 libsubid5 libseccomp2 libsemanage2
    libglib2.0-0t64)
  rm -f "$cache/debs/"*.deb
  (cd "$cache/debs" && "${apt_trixie[@]}" download docker.io/trixie "${podman_debs[@]/%//trixie}")
  rm -rf "$ENGINES.new"
  mkdir -p "$ENGINES.new/docker-26" "$ENGINES.new/podman-5"
  dpkg -x "$cache/debs/"docker.io_*.deb "$ENGINES.new/docker-26"
  for deb in "$cache/debs/"*.deb; do
    case "$deb" in */docker.io_*) ;; *) dpkg -x "$deb" "$ENGINES.new/podman-5" ;; esac
  done
  p5="$ENGINES/podman-5/usr" lib="$ENGINES/podman-5/usr/lib/x86_64-linux-gnu"
  for bin in bin/podman bin/conmon bin/passt bin/passt.avx2 bin/pasta bin/pasta.avx2 lib/podman/netavark \
    lib/podman/aardvark-dns libexec/podman/rootlessport; do
    patchelf --set-interpreter "$lib/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$lib" \
      "$ENGINES.new/podman-5/usr/$bin"
  done
  rm -rf "$ENGINES"
  mv "$ENGINES.new" "$ENGINES"
  "$ENGINES/docker-26/usr/sbin/dockerd" --version >/dev/null
  "$p5/bin/podman" --version >/dev/null
  dpkg-deb -f "$cache/debs/"docker.io_*.deb Version > "$ENGINES/docker-26/VERSION"
  dpkg-deb -f "$cache/debs/"podman_*.deb Version > "$ENGINES/podman-5/VERSION"
  touch "$ENGINES_STAMP"
fi
