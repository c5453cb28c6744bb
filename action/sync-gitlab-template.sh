#!/bin/sh
# Copies action/fwd-ci.sh into templates/fwd.yml, whose before_script
# embeds it verbatim (a GitLab component brings no files into the job).
# Run after editing fwd-ci.sh; tests/e2e/tests/ci_actions.rs fails until
# the copy matches.
set -eu
cd "$(dirname "$0")/.."
tmp=templates/fwd.yml.tmp
awk -v lib=action/fwd-ci.sh '
  skipping && /^    - fwd_ci_gitlab_start$/ { skipping = 0 }
  skipping { next }
  { print }
  /^    - &fwd_ci_lib \|$/ {
    while ((getline line < lib) > 0) print (line == "" ? "" : "      " line)
    skipping = 1
  }
' templates/fwd.yml >"$tmp"
mv "$tmp" templates/fwd.yml
