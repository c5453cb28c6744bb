//! Per-process CPU, context switches and memory, from /proc.

#[allow(unused_imports)]
use super::*;

pub(crate) fn proc_status_field(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (utime+stime of the whole process) and voluntary+involuntary context
/// switches per thread id.
pub(crate) struct CpuSample {
    pub(crate) cpu: f64,
    pub(crate) switches: HashMap<String, u64>,
}

pub(crate) fn proc_cpu_wakeups(pid: u32) -> CpuSample {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let cpu = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // after ')': state=0 … utime=11 stime=12
            let u: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((u + st) / ticks)
        })
        .unwrap_or(0.0);
    let mut switches = HashMap::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let mut n = 0;
            if let Ok(text) = fs::read_to_string(t.path().join("status")) {
                for l in text.lines() {
                    if l.starts_with("voluntary_ctxt_switches")
                        || l.starts_with("nonvoluntary_ctxt_switches")
                    {
                        n += l
                            .split_whitespace()
                            .nth(1)
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                }
            }
            switches.insert(t.file_name().to_string_lossy().into_owned(), n);
        }
    }
    CpuSample { cpu, switches }
}

/// (CPU seconds, context switches, threads seen) between two samples. Threads that
/// exist at the end count fully if they are new; threads that ended in between are lost
/// (the count is then a lower bound; the number of threads is reported).
pub(crate) fn cpu_delta(a: &CpuSample, b: &CpuSample) -> (f64, u64, usize) {
    let sw = b
        .switches
        .iter()
        .map(|(tid, n)| n.saturating_sub(a.switches.get(tid).copied().unwrap_or(0)))
        .sum();
    let mut tids: Vec<&String> = a.switches.keys().chain(b.switches.keys()).collect();
    tids.sort();
    tids.dedup();
    (b.cpu - a.cpu, sw, tids.len())
}
