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

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}; run this script as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
