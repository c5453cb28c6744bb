# shellcheck shell=sh
# fwd in CI: install fwd, start fwdd in the background, wait until its hosts
# answer, and later stop it and say what it did. Sourced (never run) by
# action/main.sh and action/post.sh (GitHub) and embedded verbatim in
# templates/fwd.yml (GitLab), so it is POSIX sh: a job image may have no
# bash. It defines functions and nothing else.
#
# Settings, all from the environment (the adapters map their CI's inputs):
#   FWD_CI_DIR          private directory (0700): key, known_hosts, ssh config,
#                       fwdd's runtime directory
#   FWD_CI_LOG_DIR      where fwdd's log goes (default FWD_CI_DIR)
#   FWD_CI_HOSTS        host URLs (ssh://[user@]host[:port]), separated by
#                       newlines, commas or spaces
#   FWD_CI_SSH_KEY      the private key: its text, or the path of a file
#   FWD_CI_KNOWN_HOSTS  known_hosts lines, or the path of a file
#   FWD_CI_EXPOSE       `expose` entries for the first host (same separators)
#   FWD_CI_CONFIG       an fwdd configuration file (TOML), optional
#   FWD_CI_BIN_DIR      fwdd and fwdctl are already here: nothing is downloaded
#   FWD_CI_VERSION      else: the release to install, e.g. 0.1.0
#   FWD_CI_RELEASE_URL  where fwd-VERSION-TARGET.tar.gz and its .sha256 are:
#                       https://…, file://… or a directory
#   FWD_CI_SHA256       the tarball's expected sha256 (else its .sha256 file)
#   FWD_CI_TARGET       the release's target triple (default: this machine's)
#   FWD_CI_TIMEOUT      seconds to wait for the hosts (default 60)
#   FWD_CI_FLAVOR       github or gitlab: how errors are said
#
# Inputs are data: they are quoted everywhere, split only on the separators
# above with globbing off, and never evaluated. The key and known_hosts are
# written 0600 into FWD_CI_DIR; the ssh configuration keeps
# StrictHostKeyChecking on.

# fwd_ci_say_error MESSAGE: an error annotation on GitHub (the message's
# lines kept: GitHub's escapes for %, CR and LF), else on stderr.
fwd_ci_say_error() {
  if [ "${FWD_CI_FLAVOR:-}" = github ]; then
    printf '::error title=fwd::%s\n' "$(printf '%s' "$1" | awk '
      { gsub(/%/, "%25"); gsub(/\r/, "%0D"); printf "%s%s", (NR > 1 ? "%0A" : ""), $0 }')"
  else
    printf 'fwd: %s\n' "$1" >&2
  fi
}

fwd_ci_say() {
  printf 'fwd: %s\n' "$1"
}

# fwd_ci_words TEXT: TEXT's items, one a line (separators: newline, comma,
# space, tab), without globbing.
fwd_ci_words() {
  printf '%s\n' "$1" | awk '{
    n = split($0, items, /[,\t ]+/)
    for (i = 1; i <= n; i++) if (items[i] != "") print items[i]
  }'
}

# fwd_ci_sha256 FILE: the file's sha256, hex.
fwd_ci_sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | awk '{ print $1 }'
  else
    shasum -a 256 "$1" | awk '{ print $1 }'
  fi
}

# fwd_ci_target: the release target triple of this machine, as
# packaging/build-release.sh names the tarballs (rustc's host triple).
fwd_ci_target() {
  if [ -n "${FWD_CI_TARGET:-}" ]; then
    printf '%s\n' "$FWD_CI_TARGET"
    return 0
  fi
  case "$(uname -m)" in
    x86_64 | amd64) _fwd_arch=x86_64 ;;
    aarch64 | arm64) _fwd_arch=aarch64 ;;
    *)
      fwd_ci_say_error "no fwd release for the architecture $(uname -m): build fwd on the runner and give its directory (fwd-path)"
      return 1
      ;;
  esac
  case "$(uname -s)" in
    Linux) printf '%s-unknown-linux-gnu\n' "$_fwd_arch" ;;
    Darwin) printf '%s-apple-darwin\n' "$_fwd_arch" ;;
    *)
      fwd_ci_say_error "no fwd release for $(uname -s): fwd runs on Linux and macOS"
      return 1
      ;;
  esac
}

# fwd_ci_fetch URL DEST: one file from https://, file:// or a directory.
fwd_ci_fetch() {
  case "$1" in
    *://*)
      if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 3 -o "$2" "$1"
      else
        wget -q -O "$2" "$1"
      fi
      ;;
    *) cp "$1" "$2" ;;
  esac
}

# fwd_ci_install: sets FWD_CI_BIN to a directory holding fwdd and fwdctl:
# FWD_CI_BIN_DIR as given, or the release tarball for this machine, unpacked
# only after its sha256 matched FWD_CI_SHA256 (or the .sha256 published
# beside it).
fwd_ci_install() {
  if [ -n "${FWD_CI_BIN_DIR:-}" ]; then
    for _fwd_b in fwdd fwdctl; do
      if [ ! -x "$FWD_CI_BIN_DIR/$_fwd_b" ]; then
        fwd_ci_say_error "no executable $_fwd_b in $FWD_CI_BIN_DIR (fwd-path)"
        return 1
      fi
    done
    FWD_CI_BIN=$FWD_CI_BIN_DIR
    fwd_ci_say "using $FWD_CI_BIN/fwdd and fwdctl ($("$FWD_CI_BIN/fwdd" --version 2>/dev/null || echo '?'))"
    return 0
  fi
  if [ -z "${FWD_CI_VERSION:-}" ] || [ -z "${FWD_CI_RELEASE_URL:-}" ]; then
    fwd_ci_say_error "say which fwd to install: a version and where its release is (release-url), or a directory holding fwdd and fwdctl (fwd-path)"
    return 1
  fi
  _fwd_target=$(fwd_ci_target) || return 1
  _fwd_name=fwd-$FWD_CI_VERSION-$_fwd_target
  _fwd_url=${FWD_CI_RELEASE_URL%/}/$_fwd_name.tar.gz
  _fwd_dl=$FWD_CI_DIR/download
  rm -rf "$_fwd_dl"
  mkdir -p "$_fwd_dl"
  if ! fwd_ci_fetch "$_fwd_url" "$_fwd_dl/$_fwd_name.tar.gz"; then
    fwd_ci_say_error "could not download $_fwd_url"
    return 1
  fi
  if [ -n "${FWD_CI_SHA256:-}" ]; then
    _fwd_want=$FWD_CI_SHA256
    _fwd_from="the sha256 input"
  else
    if ! fwd_ci_fetch "$_fwd_url.sha256" "$_fwd_dl/$_fwd_name.tar.gz.sha256"; then
      fwd_ci_say_error "could not download $_fwd_url.sha256 (or pin the tarball with sha256)"
      return 1
    fi
    _fwd_want=$(awk 'NR == 1 { print $1 }' "$_fwd_dl/$_fwd_name.tar.gz.sha256")
    _fwd_from="$_fwd_url.sha256"
  fi
  _fwd_got=$(fwd_ci_sha256 "$_fwd_dl/$_fwd_name.tar.gz")
  _fwd_want=$(printf '%s' "$_fwd_want" | tr 'A-F' 'a-f')
  if [ -z "$_fwd_want" ] || [ "$_fwd_got" != "$_fwd_want" ]; then
    rm -f "$_fwd_dl/$_fwd_name.tar.gz"
    fwd_ci_say_error "$_fwd_name.tar.gz has sha256 $_fwd_got, but $_fwd_from says ${_fwd_want:-nothing}: not installed"
    return 1
  fi
  if ! tar -xzf "$_fwd_dl/$_fwd_name.tar.gz" -C "$_fwd_dl"; then
    fwd_ci_say_error "could not unpack $_fwd_name.tar.gz"
    return 1
  fi
  FWD_CI_BIN=$_fwd_dl/$_fwd_name/bin
  if ! "$FWD_CI_BIN/fwdd" --version >/dev/null 2>&1; then
    fwd_ci_say_error "$FWD_CI_BIN/fwdd does not run on this machine ($_fwd_target)"
    return 1
  fi
  fwd_ci_say "installed $_fwd_name (sha256 $_fwd_got, as $_fwd_from says)"
}

# fwd_ci_secret VALUE DEST: VALUE is a file's path (a GitLab file variable)
# or the text itself; either way DEST gets it, 0600, ending in a newline
# (ssh refuses a key without one).
fwd_ci_secret() {
  (
    umask 077
    if [ -f "$1" ]; then
      cat "$1" >"$2"
    else
      printf '%s\n' "$1" | tr -d '\r' >"$2"
    fi
  ) || return 1
  chmod 600 "$2"
}

# fwd_ci_ssh_config: the ssh client configuration fwdd and doctor use. The
# given key and known_hosts come first (ssh keeps the first value it reads);
# the runner user's own configuration still applies after them.
fwd_ci_ssh_config() {
  {
    echo "# written by fwd's CI step"
    echo "Host *"
    if [ -n "${FWD_CI_SSH_KEY:-}" ]; then
      printf '  IdentityFile "%s"\n' "$FWD_CI_DIR/id"
      echo "  IdentitiesOnly yes"
    fi
    if [ -n "${FWD_CI_KNOWN_HOSTS:-}" ]; then
      printf '  UserKnownHostsFile "%s"\n' "$FWD_CI_DIR/known_hosts"
    fi
    echo "  StrictHostKeyChecking yes"
    echo "  BatchMode yes"
    echo "Match all"
    echo "Include ~/.ssh/config"
  } >"$FWD_CI_DIR/ssh_config"
}

# fwd_ci_fwdctl ARGS…: fwdctl against this step's fwdd.
fwd_ci_fwdctl() {
  "$FWD_CI_BIN/fwdctl" --socket "$FWD_CI_SOCKET" "$@"
}

# fwd_ci_doctor: doctor's words on every host, or through fwdd when the
# hosts come from the configuration file only.
fwd_ci_doctor() {
  _fwd_words=
  _fwd_hosts=$(fwd_ci_words "${FWD_CI_HOSTS:-}")
  if [ -z "$_fwd_hosts" ]; then
    _fwd_words=$(fwd_ci_fwdctl doctor 2>&1) || true
  else
    mkdir -p "$FWD_CI_DIR/doctor"
    chmod 700 "$FWD_CI_DIR/doctor"
    _fwd_old_ifs=$IFS
    IFS='
'
    for _fwd_h in $_fwd_hosts; do
      IFS=$_fwd_old_ifs
      _fwd_out=$("$FWD_CI_BIN/fwdctl" --runtime-dir "$FWD_CI_DIR/doctor" doctor --host "$_fwd_h" \
        --ssh-config "$FWD_CI_DIR/ssh_config" 2>&1) || true
      _fwd_words="$_fwd_words$_fwd_out
"
    done
    IFS=$_fwd_old_ifs
  fi
  printf '%s' "$_fwd_words"
}

# fwd_ci_log_tail [LINES]
fwd_ci_log_tail() {
  tail -n "${1:-30}" "$FWD_CI_LOG" 2>/dev/null || true
}

# fwd_ci_start: writes the secrets and the ssh configuration, starts fwdd in
# the background (its log in FWD_CI_LOG_DIR), waits until every host answers
# (fwdctl status says healthy) within FWD_CI_TIMEOUT, then exposes what
# FWD_CI_EXPOSE asks. Sets FWD_CI_PID, FWD_CI_SOCKET, FWD_CI_LOG,
# FWD_CI_RUNTIME_DIR and writes them to FWD_CI_DIR/state for the stop. On
# failure it says why in doctor's words and leaves fwdd running: the stop
# (post, after_script) ends it and reports.
fwd_ci_start() {
  set -f
  _fwd_rc=0
  fwd_ci_start_ || _fwd_rc=$?
  set +f
  return "$_fwd_rc"
}

fwd_ci_start_() {
  : "${FWD_CI_DIR:?FWD_CI_DIR is not set}"
  FWD_CI_LOG_DIR=${FWD_CI_LOG_DIR:-$FWD_CI_DIR}
  (umask 077 && mkdir -p "$FWD_CI_DIR") || return 1
  chmod 700 "$FWD_CI_DIR"
  mkdir -p "$FWD_CI_LOG_DIR"
  FWD_CI_RUNTIME_DIR=$FWD_CI_DIR/rt
  FWD_CI_SOCKET=$FWD_CI_RUNTIME_DIR/control.sock
  FWD_CI_LOG=$FWD_CI_LOG_DIR/fwdd.log
  if [ -n "${FWD_CI_SSH_KEY:-}" ]; then
    fwd_ci_secret "$FWD_CI_SSH_KEY" "$FWD_CI_DIR/id" || return 1
  fi
  if [ -n "${FWD_CI_KNOWN_HOSTS:-}" ]; then
    fwd_ci_secret "$FWD_CI_KNOWN_HOSTS" "$FWD_CI_DIR/known_hosts" || return 1
  fi
  fwd_ci_ssh_config || return 1

  # The arguments, built as positional parameters: no string is re-split.
  set -- --runtime-dir "$FWD_CI_RUNTIME_DIR" --ssh-config "$FWD_CI_DIR/ssh_config"
  if [ -n "${FWD_CI_CONFIG:-}" ]; then
    set -- "$@" --config "$FWD_CI_CONFIG"
  fi
  _fwd_old_ifs=$IFS
  IFS='
'
  for _fwd_h in $(fwd_ci_words "${FWD_CI_HOSTS:-}"); do
    set -- "$@" --host "$_fwd_h"
  done
  IFS=$_fwd_old_ifs
  if [ -z "${FWD_CI_HOSTS:-}" ] && [ -z "${FWD_CI_CONFIG:-}" ]; then
    fwd_ci_say_error "no host: give host URLs (host) or a configuration file with [[host]] (config)"
    return 1
  fi

  # No descriptor of the step's: the CI reads the step's output until it
  # closes, and fwdd outlives the step.
  "$FWD_CI_BIN/fwdd" "$@" </dev/null >>"$FWD_CI_LOG" 2>&1 &
  FWD_CI_PID=$!
  {
    printf 'FWD_CI_PID=%s\n' "$FWD_CI_PID"
    printf 'FWD_CI_BIN=%s\n' "$FWD_CI_BIN"
    printf 'FWD_CI_SOCKET=%s\n' "$FWD_CI_SOCKET"
    printf 'FWD_CI_LOG=%s\n' "$FWD_CI_LOG"
  } >"$FWD_CI_DIR/state"
  fwd_ci_say "started fwdd (pid $FWD_CI_PID), its log in $FWD_CI_LOG"

  _fwd_timeout=${FWD_CI_TIMEOUT:-60}
  case "$_fwd_timeout" in
    '' | *[!0-9]*)
      fwd_ci_say_error "timeout must be a number of seconds, not \"$_fwd_timeout\""
      return 1
      ;;
  esac
  _fwd_deadline=$(($(date +%s) + _fwd_timeout))
  _fwd_why=
  while :; do
    if ! kill -0 "$FWD_CI_PID" 2>/dev/null; then
      _fwd_why="fwdd exited at start:
$(fwd_ci_log_tail 20)"
      break
    fi
    _fwd_status_rc=0
    _fwd_status=$(fwd_ci_fwdctl status --json 2>/dev/null) || _fwd_status_rc=$?
    if [ "$_fwd_status_rc" -eq 0 ]; then
      break
    fi
    # A permanent failure (a refused key, a changed host key) is not retried
    # by waiting: say it now.
    case "$_fwd_status" in
      *'"class":"permanent"'*)
        _fwd_why="a host refused fwd and fwdd will not retry it by itself"
        break
        ;;
    esac
    if [ "$(date +%s)" -ge "$_fwd_deadline" ]; then
      _fwd_why="the hosts did not answer within ${_fwd_timeout}s"
      break
    fi
    sleep 0.2 2>/dev/null || sleep 1
  done
  if [ -n "$_fwd_why" ]; then
    _fwd_st=$(fwd_ci_fwdctl status 2>&1) || true
    fwd_ci_say_error "fwdd is not healthy: $_fwd_why
$_fwd_st

fwdctl doctor says:
$(fwd_ci_doctor)"
    return 1
  fi
  fwd_ci_say "every host answers"
  fwd_ci_fwdctl status || true

  _fwd_old_ifs=$IFS
  IFS='
'
  for _fwd_e in $(fwd_ci_words "${FWD_CI_EXPOSE:-}"); do
    IFS=$_fwd_old_ifs
    _fwd_out=
    _fwd_rc=0
    _fwd_out=$(fwd_ci_fwdctl expose "$_fwd_e" 2>&1) || _fwd_rc=$?
    if [ "$_fwd_rc" -ne 0 ]; then
      fwd_ci_say_error "expose $_fwd_e failed:
$_fwd_out"
      IFS=$_fwd_old_ifs
      return 1
    fi
    printf '%s\n' "$_fwd_out"
  done
  IFS=$_fwd_old_ifs
  return 0
}

# fwd_ci_load_state: FWD_CI_PID, FWD_CI_BIN, FWD_CI_SOCKET, FWD_CI_LOG from
# FWD_CI_DIR/state (read as data, line by line); false when there is none.
fwd_ci_load_state() {
  [ -f "${FWD_CI_DIR:-}/state" ] || return 1
  while IFS= read -r _fwd_line; do
    _fwd_value=${_fwd_line#*=}
    case "$_fwd_line" in
      FWD_CI_PID=*) FWD_CI_PID=$_fwd_value ;;
      FWD_CI_BIN=*) FWD_CI_BIN=$_fwd_value ;;
      FWD_CI_SOCKET=*) FWD_CI_SOCKET=$_fwd_value ;;
      FWD_CI_LOG=*) FWD_CI_LOG=$_fwd_value ;;
    esac
  done <"$FWD_CI_DIR/state"
  case "${FWD_CI_PID:-}" in
    '' | *[!0-9]*) return 1 ;;
  esac
}

# fwd_ci_summary: Markdown (GitHub's job summary, GitLab's log) of what
# fwdd did, from `fwdctl metrics` and `fwdctl status`; prints nothing when
# fwdd no longer answers. Sets FWD_CI_TROUBLE=1 when something failed: call
# it with a redirection, not in $(…), which would lose that.
fwd_ci_summary() {
  FWD_CI_TROUBLE=0
  _fwd_metrics=$(fwd_ci_fwdctl metrics 2>/dev/null) || {
    FWD_CI_TROUBLE=1
    return 0
  }
  _fwd_status_rc=0
  _fwd_st=$(fwd_ci_fwdctl status 2>&1) || _fwd_status_rc=$?
  _fwd_table=$(printf '%s\n' "$_fwd_metrics" | awk '
    /^#/ { next }
    {
      key = $1; value = $2 + 0
      name = key; sub(/\{.*/, "", name)
      host = ""
      if (match(key, /host="[^"]*"/)) host = substr(key, RSTART + 6, RLENGTH - 7)
      if (host == "") next
      if (!(host in seen)) { seen[host] = 1; order[++n] = host }
      if (name == "fwd_connections_total") conns[host] += value
      else if (name == "fwd_engine_connections_total") engine[host] += value
      else if (name == "fwd_host_reconnects_total") reconnects[host] += value
      else if (name == "fwd_connection_failures_total") failures[host] += value
      else if (name == "fwd_master_connected") up[host] = value
      else if (name == "fwd_forwards" && key ~ /state="active"/) active[host] += value
      else if (name == "fwd_exposures" && key ~ /state="failed"/) exposefail[host] += value
    }
    END {
      print "| host | connected at the end | forwards now | connections forwarded | docker connections | reconnects | failed connections | failed exposures |"
      print "| --- | --- | --- | --- | --- | --- | --- | --- |"
      for (i = 1; i <= n; i++) {
        h = order[i]
        printf "| %s | %s | %d | %d | %d | %d | %d | %d |\n", h, (up[h] ? "yes" : "**no**"),
          active[h], conns[h], engine[h], reconnects[h], failures[h], exposefail[h]
        if (!up[h] || reconnects[h] || failures[h] || exposefail[h]) trouble = 1
      }
      exit trouble
    }') || FWD_CI_TROUBLE=1
  if [ "$_fwd_status_rc" -ne 0 ]; then
    FWD_CI_TROUBLE=1
  fi
  echo "### fwd"
  echo
  printf '%s\n' "$_fwd_table"
  echo
  echo "<details><summary>fwdctl status at the end</summary>"
  echo
  echo '```'
  printf '%s\n' "$_fwd_st"
  echo '```'
  echo
  echo "</details>"
}

# fwd_ci_children PID: the pids of PID's children (its ssh masters).
fwd_ci_children() {
  _fwd_parent=$1
  if [ -d /proc/self ]; then
    for _fwd_stat in /proc/[0-9]*/stat; do
      _fwd_line=$(cat "$_fwd_stat" 2>/dev/null) || continue
      # The name (field 2) may hold spaces and parentheses: read after it.
      _fwd_rest=${_fwd_line##*) }
      # shellcheck disable=SC2086 # the fields, split on purpose
      set -- $_fwd_rest
      if [ "${2:-}" = "$_fwd_parent" ]; then
        _fwd_pid=${_fwd_stat#/proc/}
        echo "${_fwd_pid%/stat}"
      fi
    done
  else
    pgrep -P "$_fwd_parent" 2>/dev/null || true
  fi
}

# fwd_ci_wait_gone SECONDS PID…: true once none of the PIDs runs (a zombie
# counts as gone), false at the deadline.
fwd_ci_wait_gone() {
  _fwd_deadline=$(($(date +%s) + $1))
  shift
  while :; do
    _fwd_left=
    for _fwd_p in "$@"; do
      if kill -0 "$_fwd_p" 2>/dev/null; then
        case "$(cat "/proc/$_fwd_p/stat" 2>/dev/null)" in
          *') Z '*) ;;
          *) _fwd_left="$_fwd_left $_fwd_p" ;;
        esac
      fi
    done
    [ -z "$_fwd_left" ] && return 0
    [ "$(date +%s)" -ge "$_fwd_deadline" ] && {
      FWD_CI_LEFT=$_fwd_left
      return 1
    }
    sleep 0.1 2>/dev/null || sleep 1
  done
}

# fwd_ci_stop: ends fwdd (SIGTERM: it releases its ports and ends its ssh
# masters) and checks that neither it nor a master of it is left; SIGKILL
# for what is left after 15 s, and says so. False when something had to be
# killed or the state is missing.
fwd_ci_stop() {
  if ! kill -0 "$FWD_CI_PID" 2>/dev/null; then
    fwd_ci_say "fwdd (pid $FWD_CI_PID) had already stopped"
    return 0
  fi
  _fwd_children=$(fwd_ci_children "$FWD_CI_PID")
  kill -TERM "$FWD_CI_PID" 2>/dev/null || true
  # shellcheck disable=SC2086 # pids, split on purpose
  if fwd_ci_wait_gone 15 "$FWD_CI_PID" $_fwd_children; then
    fwd_ci_say "stopped fwdd (pid $FWD_CI_PID)${_fwd_children:+ and its ssh masters (pid $(printf '%s' "$_fwd_children" | tr '\n' ' '))}"
    return 0
  fi
  # shellcheck disable=SC2086
  kill -KILL $FWD_CI_LEFT 2>/dev/null || true
  fwd_ci_say_error "fwdd or its ssh masters did not stop within 15s of SIGTERM; killed pid$FWD_CI_LEFT"
  return 1
}

# fwd_ci_forget_secrets: the key and known_hosts are not kept after fwdd.
fwd_ci_forget_secrets() {
  rm -f "$FWD_CI_DIR/id" "$FWD_CI_DIR/known_hosts"
}

# fwd_ci_gitlab_unset VALUE: VALUE, or nothing when it is a reference to a
# CI/CD variable that GitLab left as written because it is not defined.
fwd_ci_gitlab_unset() {
  case "$1" in
    '$'*)
      _fwd_name=${1#\$}
      _fwd_name=${_fwd_name#\{}
      _fwd_name=${_fwd_name%\}}
      case "$_fwd_name" in
        '' | *[!A-Za-z0-9_]*) printf '%s' "$1" ;;
        *) fwd_ci_say "$1 is not defined: left out" >&2 ;;
      esac
      ;;
    *) printf '%s' "$1" ;;
  esac
}

# fwd_ci_gitlab_start (before_script): installs and starts fwdd, then exports
# `fwdctl env` into the job's shell (before_script and script share it),
# with fwdctl on PATH and FWD_SOCKET set. fwdd's private directory is under
# TMPDIR (short socket paths); its log under CI_PROJECT_DIR/.fwd, where the
# template's artifacts find it.
fwd_ci_gitlab_start() {
  FWD_CI_FLAVOR=gitlab
  FWD_CI_DIR=${TMPDIR:-/tmp}/fwd-${CI_JOB_ID:-job}
  FWD_CI_LOG_DIR=${CI_PROJECT_DIR:-.}/.fwd
  FWD_CI_SSH_KEY=$(fwd_ci_gitlab_unset "${FWD_CI_SSH_KEY:-}")
  FWD_CI_KNOWN_HOSTS=$(fwd_ci_gitlab_unset "${FWD_CI_KNOWN_HOSTS:-}")
  mkdir -p "$FWD_CI_LOG_DIR"
  printf '%s\n' "$FWD_CI_DIR" >"$FWD_CI_LOG_DIR/private-dir"
  fwd_ci_install || return 1
  fwd_ci_start || return 1
  _fwd_env=$(fwd_ci_fwdctl env --format sh) || {
    fwd_ci_say_error "fwdctl env failed: DOCKER_HOST is not set"
    return 1
  }
  # fwdctl's own quoting: one export NAME='value' line per variable.
  eval "$_fwd_env"
  export FWD_SOCKET="$FWD_CI_SOCKET"
  export PATH="$FWD_CI_BIN:$PATH"
  fwd_ci_say "DOCKER_HOST=$DOCKER_HOST"
}

# fwd_ci_gitlab_stop (after_script, a shell of its own): the summary in the
# job's log, the log's tail when the job failed or fwd had trouble, then
# fwdd stopped. The log stays in .fwd/fwdd.log for the artifacts.
fwd_ci_gitlab_stop() {
  FWD_CI_FLAVOR=gitlab
  FWD_CI_DIR=$(cat "${CI_PROJECT_DIR:-.}/.fwd/private-dir" 2>/dev/null) || FWD_CI_DIR=
  if ! fwd_ci_load_state; then
    fwd_ci_say "fwdd was not started by this job's before_script, or this executor runs after_script where it cannot be seen (it ended with the job's script)"
    return 0
  fi
  fwd_ci_summary >"$FWD_CI_DIR/summary.md"
  printf '\033[0Ksection_start:%s:fwd_summary\r\033[0Kfwd: what it did\n' "$(date +%s)"
  if [ -s "$FWD_CI_DIR/summary.md" ]; then
    cat "$FWD_CI_DIR/summary.md"
  else
    fwd_ci_say "fwdd (pid $FWD_CI_PID) no longer answered at the end of the job"
  fi
  printf '\033[0Ksection_end:%s:fwd_summary\r\033[0K\n' "$(date +%s)"
  if [ "$FWD_CI_TROUBLE" = 1 ] || [ "${CI_JOB_STATUS:-}" != success ]; then
    fwd_ci_say "the last lines of fwdd's log (all of it: .fwd/fwdd.log in the job's artifacts):"
    fwd_ci_log_tail 40
  fi
  _fwd_rc=0
  fwd_ci_stop || _fwd_rc=1
  fwd_ci_forget_secrets
  return "$_fwd_rc"
}
