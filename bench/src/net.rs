//! Network helpers: connections in the runner namespace, the HTTP probe and
//! the prober that runs one every few milliseconds, TCP counters.

#[allow(unused_imports)]
use super::*;

pub(crate) fn local(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

/// Spawns a thread that enters the network namespace `ns` and runs `f`. Threads it
/// spawns in turn inherit the namespace.
pub(crate) fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = netns_path(ns);
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Connect, send an HTTP request, read the first byte of the answer.
pub(crate) fn first_byte(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(HTTP_REQ)?;
    let mut b = [0u8; 1];
    match s.read(&mut b)? {
        0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Ok,
    Refused,
    Failed(String),
}

/// A full HTTP GET; `Ok` only for a 2xx answer.
pub(crate) fn http_probe(addr: SocketAddr) -> Outcome {
    let run = || -> io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(HTTP_REQ)?;
        let mut buf = Vec::new();
        s.take(64 * 1024).read_to_end(&mut buf)?;
        Ok(buf.starts_with(b"HTTP/1.") && buf.get(9) == Some(&b'2'))
    };
    match run() {
        Ok(true) => Outcome::Ok,
        Ok(false) => Outcome::Failed("no 2xx answer".into()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Outcome::Refused,
        Err(e) => Outcome::Failed(e.kind().to_string()),
    }
}

pub(crate) struct Probe {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) outcome: Outcome,
}

/// Starts one HTTP probe every `interval` (each on its own thread, so a probe that waits
/// does not delay the next), at most `max` of them, until stopped.
pub(crate) struct Prober {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) results: Arc<Mutex<Vec<Probe>>>,
    pub(crate) handle: Option<JoinHandle<()>>,
}

impl Prober {
    pub(crate) fn start(ns: &str, port: u16, interval: Duration, max: usize) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (st, res) = (stop.clone(), results.clone());
        let handle = spawn_in_ns(ns, move || {
            let mut kids = Vec::new();
            while !st.load(Ordering::SeqCst) && kids.len() < max {
                let res = res.clone();
                kids.push(thread::spawn(move || {
                    let start = Instant::now();
                    let outcome = http_probe(local(port));
                    res.lock().expect("lock").push(Probe {
                        start,
                        end: Instant::now(),
                        outcome,
                    });
                }));
                thread::sleep(interval);
            }
            for k in kids {
                let _ = k.join();
            }
        });
        Prober {
            stop,
            results,
            handle: Some(handle),
        }
    }

    /// Whether a probe started at or after `t` has succeeded.
    pub(crate) fn ok_since(&self, t: Instant) -> bool {
        self.results
            .lock()
            .expect("lock")
            .iter()
            .any(|p| p.start >= t && p.outcome == Outcome::Ok)
    }

    pub(crate) fn finish(mut self) -> Vec<Probe> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        std::mem::take(&mut *self.results.lock().expect("lock"))
    }
}

/// Polls `f` every 5 ms until true or `timeout`; returns whether it became true.
pub(crate) fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// TcpExt DelayedACKs of a network namespace (from /proc/net/netstat seen in it).
pub(crate) fn delayed_acks(ns: &str) -> u64 {
    tcp_ext(ns, "DelayedACKs")
}

/// A TcpExt counter of a network namespace (from /proc/net/netstat seen in it).
pub(crate) fn tcp_ext(ns: &str, name: &str) -> u64 {
    let text = fwd_e2e::in_netns(ns, || fs::read_to_string("/proc/thread-self/net/netstat"))
        .unwrap_or_default();
    tcp_ext_in(&text, name)
}

/// A TcpExt counter from the text of a `net/netstat` file.
pub(crate) fn tcp_ext_in(text: &str, name: &str) -> u64 {
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    if lines.len() < 2 {
        return 0;
    }
    let names = lines[0].split_whitespace();
    let vals = lines[1].split_whitespace();
    names
        .zip(vals)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Connection setup (connect + first byte, ms) to `a` and to `b`, alternating,
/// `conns` each after 20 warm-ups, in network namespace `ns`; at most 5 minutes.
pub(crate) fn alternate_first_byte(
    ns: &str,
    a: SocketAddr,
    b: SocketAddr,
    conns: usize,
) -> (Vec<f64>, Vec<f64>) {
    spawn_in_ns(ns, move || {
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let _ = first_byte(a, Duration::from_secs(5));
            let _ = first_byte(b, Duration::from_secs(5));
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        for _ in 0..conns {
            if Instant::now() > deadline {
                break;
            }
            for (addr, v) in [(a, &mut ta), (b, &mut tb)] {
                let t = Instant::now();
                if first_byte(addr, Duration::from_secs(5)).is_ok() {
                    v.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        (ta, tb)
    })
    .join()
    .expect("setup bench")
}

/// Reads from `s` until `want` bytes came, the stream ended or failed;
/// returns how many came.
pub(crate) fn read_up_to(s: &mut TcpStream, want: u64) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < want {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k as u64,
        }
    }
    got
}

/// MiB/s of one download of `want` bytes from `to` (a server that sends
/// them on connect, e.g. busybox `nc` restarted by a loop): a connection
/// that finds it between two clients, or ends short, is tried again, 50
/// times at most.
pub(crate) fn transfer_mib_s(to: SocketAddr, want: u64) -> Option<f64> {
    for _ in 0..50 {
        let t = Instant::now();
        let Ok(mut s) = TcpStream::connect(to) else {
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        if read_up_to(&mut s, want) >= want {
            return Some(want as f64 / 1048576.0 / t.elapsed().as_secs_f64());
        }
        drop(s);
        thread::sleep(Duration::from_millis(100));
    }
    None
}
