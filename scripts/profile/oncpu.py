#!/usr/bin/env python3
"""CPU time per connection of each process, from `perf script` output with
sched_switch events: on both CPUs, between one bench connect() and the next,
summed per process name and divided by the number of connections."""
import collections
import re
import sys

from perftrace import events, fwd_parity, is_connect

SWITCH = re.compile(r'next_comm=(.+?) next_pid=')


def main():
    running = {}
    segs, cur = [], None
    for comm, cpu, ts, ev, args in events(sys.argv[1]):
        if is_connect(comm, ev):
            cur = {'fwd': False, 'cpu': collections.Counter()}
            segs.append(cur)
        if cur is not None and ev == 'syscalls:sys_exit_accept4' and comm == 'fwdd':
            cur['fwd'] = True
        if ev == 'sched:sched_switch':
            nxt = SWITCH.search(args)
            if cpu in running and cur is not None:
                who, since = running[cpu]
                cur['cpu'][who] += ts - since
            running[cpu] = (nxt.group(1) if nxt else '?', ts)
    fwd = fwd_parity([s['fwd'] for s in segs])
    for parity, name in ((fwd, 'fwd'), (1 - fwd, 'ssh -L')):
        # The first and last may be cut by the recording's edges.
        mine = [s for i, s in enumerate(segs) if i % 2 == parity][1:-1]
        if not mine:
            continue
        total = collections.Counter()
        for s in mine:
            total.update(s['cpu'])
        print(f'== {name}: CPU µs per connection, {len(mine)} connections')
        for who, t in total.most_common(10):
            print(f'  {t / len(mine):7.1f}  {who}')
        busy = sum(t for who, t in total.items() if not who.startswith('swapper'))
        print(f'  {busy / len(mine):7.1f}  all but idle')


if __name__ == '__main__':
    main()
