#!/usr/bin/env bash
# Where a new connection's time goes, fwd vs a separate `ssh -L`, in µs.
#
# Runs `fwd-bench --only setup` (connections alternate between fwd and the
# ssh -L) and, once it is past its warm-up, records for 0.5 s the scheduler
# and the syscalls of every process on the path with `perf record -a`. Then:
#   scripts/profile/split.py  per connection, when each process reached each
#                             step, from the client's connect() (medians);
#   scripts/profile/oncpu.py  per connection, the CPU time of each process.
# The method and a recorded run are in docs/benchmarks.md.
#
# Usage: FWD_SANDBOX=DIR/env scripts/profile-setup.sh OUT_PREFIX
# (release binaries first: cargo build --release -p fwdd -p fwdctl -p fwd-bench)
set -euo pipefail
out=${1:?usage: FWD_SANDBOX=DIR/env $0 OUT_PREFIX}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
: "${FWD_SANDBOX:?set FWD_SANDBOX to the sandbox env file (tests/sandbox/up.sh prints it)}"
command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)" >&2; exit 1; }
"$root/target/release/fwd-bench" --only setup --conns 4000 >"$out.bench" 2>&1 &
bench=$!
# The timed loop starts after its line is printed and a warm-up of 20 each.
for _ in $(seq 1 600); do
  grep -q "connect+first byte" "$out.bench" 2>/dev/null && break
  sleep 0.1
done
sleep 3
events=sched:sched_switch,sched:sched_wakeup
for s in sys_enter_connect sys_exit_accept4 sys_exit_accept sys_enter_sendmsg \
  sys_enter_sendmmsg sys_exit_recvmsg sys_enter_write sys_exit_read sys_exit_recvfrom \
  sys_enter_sendto sys_enter_epoll_ctl sys_enter_setsockopt; do
  events+=",syscalls:$s"
done
perf record -o "$out.data" -a -e "$events" --exclude-perf -- sleep 0.5 >/dev/null 2>&1
wait "$bench"
perf script -i "$out.data" -F comm,pid,cpu,time,event,trace >"$out.txt" 2>/dev/null
grep "=>" "$out.bench"
python3 "$here/profile/split.py" "$out.txt"
python3 "$here/profile/oncpu.py" "$out.txt"
