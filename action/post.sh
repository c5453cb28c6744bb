#!/usr/bin/env bash
# The action's post step (run by post.js at the end of the job, also when it
# failed): what fwdd did goes to the job summary (and the log's tail when
# something went wrong), then fwdd is stopped and nothing of it may remain.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=fwd-ci.sh
. "$here/fwd-ci.sh"

export FWD_CI_FLAVOR=github
# main saved it with GITHUB_STATE; GitHub gives it back as STATE_dir.
FWD_CI_DIR=${STATE_dir:-${RUNNER_TEMP:?RUNNER_TEMP is not set: this runs as a GitHub Actions step}/fwd}
if ! fwd_ci_load_state; then
  fwd_ci_say "fwdd was not started: nothing to stop"
  exit 0
fi

fwd_ci_summary >"$FWD_CI_DIR/summary.md"
summary=$(cat "$FWD_CI_DIR/summary.md")
if [ -z "$summary" ]; then
  FWD_CI_TROUBLE=1
  summary=$(printf '### fwd\n\nfwdd (pid %s) no longer answered at the end of the job.' "$FWD_CI_PID")
fi
if [ "$FWD_CI_TROUBLE" = 1 ]; then
  fence='```'
  summary="$summary

<details><summary>the last lines of fwdd's log</summary>

$fence
$(fwd_ci_log_tail 40)
$fence

</details>"
fi
printf '%s\n' "$summary"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  printf '%s\n\n' "$summary" >>"$GITHUB_STEP_SUMMARY"
fi

rc=0
fwd_ci_stop || rc=1
fwd_ci_forget_secrets
if [ "$FWD_CI_TROUBLE" = 1 ]; then
  # The runner removes RUNNER_TEMP after the job: only an upload step of
  # the workflow (before this one) can keep the whole log.
  printf '::warning title=fwd::fwd had trouble (see the job summary). To keep the whole log, upload the output log-path with actions/upload-artifact in a step with if: failure()\n'
fi
exit "$rc"
