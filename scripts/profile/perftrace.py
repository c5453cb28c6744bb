"""What split.py and oncpu.py share: the lines of `perf script -F
comm,pid,cpu,time,event,trace`, and which half of the alternating bench
connections went through fwd."""
import re

LINE = re.compile(r'^\s*(\S.*?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$')


def events(path):
    """(comm, cpu, µs, event, args) per traced line."""
    for line in open(path, errors='replace'):
        m = LINE.match(line)
        if m:
            comm, _pid, cpu, ts, ev, args = m.groups()
            yield comm, cpu, float(ts) * 1e6, ev, args


def is_connect(comm, ev):
    """The bench client starting a connection."""
    return ev == 'syscalls:sys_enter_connect' and comm == 'fwd-bench'


def fwd_parity(accepted_by_fwdd):
    """The bench alternates fwd and ssh -L: the fwd half is the one in which
    fwdd accepts. `accepted_by_fwdd[i]` says whether it did in connection i."""
    hits = [0, 0]
    for i, fwd in enumerate(accepted_by_fwdd):
        hits[i % 2] += fwd
    return 0 if hits[0] >= hits[1] else 1
