#!/usr/bin/env python3
"""Per-connection steps of connection setup, from `perf script` output.

A connection starts at the bench client's connect() (comm fwd-bench); the
bench alternates fwd and ssh -L, and the fwd half is the one in which fwdd
accepts. For each process/syscall, the first time it happened after the
connect is taken, and the median over connections printed, in order.
Steps that belong to the previous connection's teardown show up too; read
the path's steps (accept, sendmmsg, recvmsg, sshd's connect, the client's
first recvfrom) from the table."""
import collections
import statistics
import sys

from perftrace import events, fwd_parity, is_connect


def segments(path):
    segs, cur = [], None
    for comm, _cpu, ts, ev, _args in events(path):
        if ev.startswith('sched:'):
            continue
        if is_connect(comm, ev):
            cur = {'t0': ts, 'ev': collections.OrderedDict()}
            segs.append(cur)
            continue
        if cur is not None:
            ev = ev.replace('syscalls:', '')
            cur['ev'].setdefault(f'{comm}/{ev}', ts - cur['t0'])
    return segs


def main():
    segs = segments(sys.argv[1])
    if len(segs) < 4:
        sys.exit('too few connections in the trace')
    fwd = fwd_parity(['fwdd/sys_exit_accept4' in s['ev'] for s in segs])
    for parity, name in ((fwd, 'fwd'), (1 - fwd, 'ssh -L')):
        mine = [s for i, s in enumerate(segs) if i % 2 == parity]
        times = collections.defaultdict(list)
        for s in mine:
            for key, t in s['ev'].items():
                times[key].append(t)
        print(f'== {name}: {len(mine)} connections, µs from connect(), median (p90)')
        rows = []
        for key, v in times.items():
            if len(v) > len(mine) * 0.5:
                v.sort()
                rows.append((statistics.median(v), v[int(len(v) * 0.9)], key, len(v)))
        for med, p90, key, n in sorted(rows):
            print(f'  {med:7.1f} ({p90:7.1f})  {key}  n={n}')


if __name__ == '__main__':
    main()
