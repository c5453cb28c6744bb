#!/usr/bin/env bash
# The action's main step (run by main.js): installs fwd, starts fwdd, waits
# until its hosts answer, exposes what was asked, and hands later steps the
# engine and fwdctl through GITHUB_ENV and GITHUB_PATH. The work is
# fwd-ci.sh's, shared with the GitLab component; this maps GitHub's inputs
# and files onto it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=fwd-ci.sh
. "$here/fwd-ci.sh"

# input NAME: the input as GitHub passes it, INPUT_<NAME in capitals>. Names
# with '-' are no shell variables: printenv reads them.
input() {
  printenv "INPUT_$(printf '%s' "$1" | tr '[:lower:] ' '[:upper:]_')" || true
}

export FWD_CI_FLAVOR=github
FWD_CI_DIR=${RUNNER_TEMP:?RUNNER_TEMP is not set: this runs as a GitHub Actions step}/fwd
FWD_CI_HOSTS=$(input host)
FWD_CI_SSH_KEY=$(input ssh-key)
FWD_CI_KNOWN_HOSTS=$(input known-hosts)
FWD_CI_EXPOSE=$(input expose)
FWD_CI_CONFIG=$(input config)
FWD_CI_BIN_DIR=$(input fwd-path)
FWD_CI_SHA256=$(input sha256)
FWD_CI_TIMEOUT=$(input timeout)
FWD_CI_TIMEOUT=${FWD_CI_TIMEOUT:-60}
# The release defaults to the action's own version (the ref in `uses:`),
# published on the action's own repository.
FWD_CI_VERSION=$(input version)
if [ -z "$FWD_CI_VERSION" ] && [ -f "$here/../Cargo.toml" ]; then
  FWD_CI_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/../Cargo.toml" | head -n1)
fi
FWD_CI_VERSION=${FWD_CI_VERSION#v}
FWD_CI_RELEASE_URL=$(input release-url)
if [ -z "$FWD_CI_RELEASE_URL" ] && [ -n "${GITHUB_ACTION_REPOSITORY:-}" ]; then
  FWD_CI_RELEASE_URL=${GITHUB_SERVER_URL:-https://github.com}/$GITHUB_ACTION_REPOSITORY/releases/download/v$FWD_CI_VERSION
fi

# Where post finds fwdd, whatever happens next.
printf 'dir=%s\n' "$FWD_CI_DIR" >>"${GITHUB_STATE:?GITHUB_STATE is not set}"
printf 'log-path=%s\n' "$FWD_CI_DIR/fwdd.log" >>"${GITHUB_OUTPUT:?GITHUB_OUTPUT is not set}"

fwd_ci_install
fwd_ci_start

env_lines=$(fwd_ci_fwdctl env --format github) || {
  fwd_ci_say_error "fwdctl env failed: DOCKER_HOST is not set for later steps (ports are forwarded)"
  exit 1
}
{
  printf '%s\n' "$env_lines"
  printf 'FWD_SOCKET=%s\n' "$FWD_CI_SOCKET"
} >>"${GITHUB_ENV:?GITHUB_ENV is not set}"
printf '%s\n' "$FWD_CI_BIN" >>"${GITHUB_PATH:?GITHUB_PATH is not set}"
docker_host=$(printf '%s\n' "$env_lines" | sed -n 's/^DOCKER_HOST=//p')
{
  printf 'docker-host=%s\n' "$docker_host"
  printf 'socket=%s\n' "$FWD_CI_SOCKET"
} >>"$GITHUB_OUTPUT"
fwd_ci_say "later steps have DOCKER_HOST=$docker_host, fwdctl on PATH and FWD_SOCKET"
