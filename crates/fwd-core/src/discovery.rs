//! Finding a host's engine without configuration.
//!
//! One constant remote command ([`DISCOVERY_SCRIPT`], nothing from the
//! remote side in it) lists the places an engine may listen, in the order
//! fwd tries them, each with what is there: the remote `DOCKER_HOST`, the
//! docker CLI's context (when there is a CLI: a host without one is
//! normal), rootless Docker and rootless Podman under `$XDG_RUNTIME_DIR`,
//! rootful Podman, rootful Docker. [`parse`] reads that answer strictly
//! (bounded, paths validated before they go into a mux request), and
//! [`choose`] takes the first socket the user may open, or says, in one
//! error, every place tried and what was there.

use std::fmt;

/// Lists the candidates, one per line: `source TAB path TAB state`, where
/// state is `socket`, `noaccess` (a socket the user may not write),
/// `notsocket`, `missing`, or `other` (an endpoint that is no Unix socket).
/// POSIX sh; only shell builtins and, if present, the docker CLI and `id`.
/// The rootless places are under `$XDG_RUNTIME_DIR`, or `/run/user/UID`
/// where the session has none (an sshd without PAM sets none: systemd's
/// pam module is what sets it, to that same directory).
pub const DISCOVERY_SCRIPT: &str = r#"c() { if [ -S "$2" ]; then if [ -w "$2" ]; then s=socket; else s=noaccess; fi; elif [ -e "$2" ]; then s=notsocket; else s=missing; fi; printf '%s\t%s\t%s\n' "$1" "$2" "$s"; }
u() { case "$2" in unix://*) c "$1" "${2#unix://}";; '') ;; *) printf '%s\t%s\tother\n' "$1" "$2";; esac; }
u env "$DOCKER_HOST"
if command -v docker >/dev/null 2>&1; then u context "$(docker context inspect --format '{{.Endpoints.docker.Host}}' 2>/dev/null)"; fi
r=$XDG_RUNTIME_DIR; if [ -z "$r" ] && command -v id >/dev/null 2>&1; then r=/run/user/$(id -u); fi
if [ -n "$r" ]; then c rootless-docker "$r/docker.sock"; c rootless-podman "$r/podman/podman.sock"; fi
c podman /run/podman/podman.sock
c docker /var/run/docker.sock
exit 0"#;

/// Where a candidate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The remote user's `DOCKER_HOST`.
    Env,
    /// The remote docker CLI's current context.
    Context,
    RootlessDocker,
    RootlessPodman,
    Podman,
    Docker,
}

impl Source {
    fn parse(s: &str) -> Option<Source> {
        Some(match s {
            "env" => Source::Env,
            "context" => Source::Context,
            "rootless-docker" => Source::RootlessDocker,
            "rootless-podman" => Source::RootlessPodman,
            "podman" => Source::Podman,
            "docker" => Source::Docker,
            _ => return None,
        })
    }

    /// How it was found, for status.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Env => "DOCKER_HOST",
            Source::Context => "docker context",
            Source::RootlessDocker => "rootless Docker's socket",
            Source::RootlessPodman => "rootless Podman's socket",
            Source::Podman => "Podman's socket",
            Source::Docker => "Docker's default socket",
        }
    }
}

/// Every way an engine is found, as `EngineHealth::found_by` says it.
pub const FOUND_BY: [&str; 7] = [
    "engine_remote_socket",
    "DOCKER_HOST",
    "docker context",
    "rootless Docker's socket",
    "rootless Podman's socket",
    "Podman's socket",
    "Docker's default socket",
];

/// The static name for a `found_by` read back (an upgrade's handover).
pub fn found_by(s: &str) -> Option<&'static str> {
    FOUND_BY.iter().copied().find(|f| *f == s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Socket,
    NoAccess,
    NotSocket,
    Missing,
    /// Not a Unix socket endpoint (`tcp://…`).
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub source: Source,
    /// A socket path (validated), or the endpoint as given for `Other`.
    pub path: String,
    pub state: State,
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.state {
            State::Socket => "a socket",
            State::NoAccess => "permission denied (the user may not use this socket: the docker group, or the user's own rootless engine)",
            State::NotSocket => "not a socket",
            State::Missing => "no such file",
            State::Other => "not a Unix socket (fwd reaches it with dial-stdio sessions only)",
        };
        write!(f, "{} ({}): {what}", self.path, self.source.as_str())
    }
}

/// Lines and bytes read of the script's answer, at most.
const MAX_LINES: usize = 16;

/// The script's answer → candidates, in order. Lines that do not parse
/// (or paths that are not absolute, bounded, free of control characters)
/// are skipped: the remote side chooses nothing that goes unchecked.
pub fn parse(output: &str) -> Vec<Candidate> {
    output
        .lines()
        .take(MAX_LINES)
        .filter_map(|line| {
            let mut f = line.split('\t');
            let source = Source::parse(f.next()?)?;
            let path = f.next()?;
            let state = match f.next()? {
                "socket" => State::Socket,
                "noaccess" => State::NoAccess,
                "notsocket" => State::NotSocket,
                "missing" => State::Missing,
                "other" => State::Other,
                _ => return None,
            };
            if f.next().is_some() {
                return None;
            }
            // `other` endpoints (tcp://…) need not be paths; bounded and plain all the same.
            match crate::paths::remote_socket_path(path) {
                Ok(_) => {}
                Err(crate::paths::PathProblem::NotAbsolute) if state == State::Other => {}
                Err(_) => return None,
            }
            Some(Candidate {
                source,
                path: path.to_string(),
                state,
            })
        })
        .collect()
}

/// Every socket the user may open, in order, each path once: the first is
/// tried, the next ones if it does not answer. Only the named one where the
/// host names one ([`named`]).
pub fn usable(candidates: &[Candidate]) -> Vec<&Candidate> {
    if let Some(n) = named(candidates) {
        return if n.state == State::Socket {
            vec![n]
        } else {
            Vec::new()
        };
    }
    let mut out: Vec<&Candidate> = Vec::new();
    for c in candidates.iter().filter(|c| c.state == State::Socket) {
        if !out.iter().any(|o| o.path == c.path) {
            out.push(c);
        }
    }
    out
}

/// The engine the remote user named: `DOCKER_HOST`, or a docker context
/// other than the default one (whose endpoint is Docker's default socket,
/// the last place searched anyway). The remote CLI would use that engine
/// and no other; so does fwd, whatever else is found beside it.
pub fn named(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates.iter().find(|c| match c.source {
        Source::Env => true,
        Source::Context => c.path != DOCKER_DEFAULT_SOCKET,
        _ => false,
    })
}

/// Whether an engine found this way (`EngineHealth::found_by`) at `path` is
/// one the host names: `engine_remote_socket`, `DOCKER_HOST`, or a docker
/// context other than the default one.
pub fn names_the_engine(found_by: &str, path: &str) -> bool {
    match found_by {
        "engine_remote_socket" => true,
        f if f == Source::Env.as_str() => true,
        f if f == Source::Context.as_str() => path != DOCKER_DEFAULT_SOCKET,
        _ => false,
    }
}

/// Docker's default socket, which the CLI's default context names.
const DOCKER_DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The engine found: the one the user named ([`named`]), if it is a socket
/// the user may open; else, with none named, the first candidate that is;
/// else every place tried and what was there, with what to do.
pub fn choose(candidates: &[Candidate]) -> Result<&Candidate, String> {
    if let Some(n) = named(candidates) {
        return match n.state {
            State::Socket => Ok(n),
            _ => Err(format!(
                "no engine at the one the host names: {n}; fwd uses only the engine {} names \
                 (another one beside it is never taken): start that engine, or change {}",
                n.source.as_str(),
                n.source.as_str()
            )),
        };
    }
    if let Some(c) = candidates.iter().find(|c| c.state == State::Socket) {
        return Ok(c);
    }
    let mut seen: Vec<&Candidate> = Vec::new();
    for c in candidates {
        if !seen.iter().any(|s| s.path == c.path) {
            seen.push(c);
        }
    }
    let tried: Vec<String> = seen.iter().map(|c| c.to_string()).collect();
    let denied = seen.iter().any(|c| c.state == State::NoAccess);
    let hint = if denied {
        "add the remote user to the engine's group (docker), or use the user's own rootless \
         engine; or set engine_remote_socket"
    } else {
        "start the engine, or set engine_remote_socket to the socket it listens on"
    };
    Err(format!(
        "no engine found on the host; tried {}; {hint}",
        if tried.is_empty() {
            "nothing (the discovery command printed nothing)".to_string()
        } else {
            tried.join("; ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(source: &str, path: &str, state: &str) -> String {
        format!("{source}\t{path}\t{state}\n")
    }

    #[test]
    fn the_first_usable_socket_wins_in_the_scripts_order() {
        let out = [
            line("context", "/var/run/docker.sock", "socket"),
            line("rootless-docker", "/run/user/1000/nope.sock", "missing"),
            line(
                "rootless-podman",
                "/run/user/1000/podman/podman.sock",
                "socket",
            ),
            line("docker", "/var/run/docker.sock", "socket"),
        ]
        .concat();
        let cands = parse(&out);
        assert_eq!(cands.len(), 4);
        // The default context names Docker's default socket: no choice of
        // the user's, so the search order decides.
        assert_eq!(named(&cands), None);
        let c = choose(&cands).unwrap();
        assert_eq!(c.path, "/var/run/docker.sock");
        assert_eq!(c.source, Source::Context);
        let c = choose(&cands[1..]).unwrap();
        assert_eq!(c.path, "/run/user/1000/podman/podman.sock");
        assert_eq!(c.source, Source::RootlessPodman);
        let paths: Vec<&str> = usable(&cands).iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/var/run/docker.sock", "/run/user/1000/podman/podman.sock"]
        );
    }

    #[test]
    fn an_engine_the_host_names_is_the_only_one_taken() {
        let beside = [
            line("rootless-docker", "/run/user/1000/docker.sock", "socket"),
            line("podman", "/run/podman/podman.sock", "socket"),
        ]
        .concat();
        // DOCKER_HOST names a socket that is gone (its engine restarting):
        // the others found beside it are never taken.
        let gone = parse(&(line("env", "/srv/docker.sock", "missing") + &beside));
        assert_eq!(named(&gone).map(|c| c.source), Some(Source::Env));
        let e = choose(&gone).unwrap_err();
        assert!(
            e.contains("/srv/docker.sock (DOCKER_HOST): no such file"),
            "{e}"
        );
        assert!(e.contains("uses only the engine DOCKER_HOST names"), "{e}");
        assert!(!e.contains("podman.sock"), "{e}");
        assert!(usable(&gone).is_empty());
        let there = parse(&(line("env", "/srv/docker.sock", "socket") + &beside));
        assert_eq!(
            choose(&there).map(|c| c.path.as_str()),
            Ok("/srv/docker.sock")
        );
        assert_eq!(usable(&there).len(), 1);
        // A context of the user's own (not the default one) names it too.
        let context = parse(&(line("context", "/run/podman/podman.sock", "noaccess") + &beside));
        assert_eq!(named(&context).map(|c| c.source), Some(Source::Context));
        assert!(choose(&context).unwrap_err().contains("docker context"));
        // A TCP endpoint named is the engine too (dial-stdio), not a socket beside it.
        let tcp = parse(&(line("env", "tcp://10.0.0.1:2375", "other") + &beside));
        assert_eq!(named(&tcp).map(|c| c.state), Some(State::Other));
        assert!(choose(&tcp).is_err());
    }

    #[test]
    fn none_found_lists_each_place_and_what_was_there() {
        let out = [
            line("context", "/var/run/docker.sock", "missing"),
            line("podman", "/run/podman/podman.sock", "missing"),
            line("docker", "/var/run/docker.sock", "missing"),
        ]
        .concat();
        let e = choose(&parse(&out)).unwrap_err();
        assert!(
            e.contains("/run/podman/podman.sock (Podman's socket): no such file"),
            "{e}"
        );
        assert_eq!(
            e.matches("/var/run/docker.sock").count(),
            1,
            "each path once: {e}"
        );
        assert!(e.contains("engine_remote_socket"), "{e}");
        let denied =
            choose(&parse(&line("docker", "/var/run/docker.sock", "noaccess"))).unwrap_err();
        assert!(
            denied.contains("permission denied") && denied.contains("docker"),
            "{denied}"
        );
        assert!(choose(&parse("")).unwrap_err().contains("printed nothing"));
    }

    #[test]
    fn what_the_remote_side_prints_is_checked() {
        let out = [
            line("env", "relative/path.sock", "socket"),
            line("bogus", "/x.sock", "socket"),
            "docker\t/a\x1b[31m.sock\tsocket\n".to_string(),
            line("env", "tcp://10.0.0.1:2375", "other"),
            "docker\t/ok.sock\tsocket\textra\n".to_string(),
            line("docker", "/var/run/docker.sock", "weird"),
        ]
        .concat();
        let cands = parse(&out);
        assert_eq!(cands.len(), 1, "{cands:?}");
        assert_eq!(cands[0].state, State::Other);
        assert!(choose(&cands).unwrap_err().contains("dial-stdio"));
    }

    #[test]
    fn every_source_is_a_known_way_of_finding() {
        for s in [
            Source::Env,
            Source::Context,
            Source::RootlessDocker,
            Source::RootlessPodman,
            Source::Podman,
            Source::Docker,
        ] {
            assert_eq!(found_by(s.as_str()), Some(s.as_str()));
        }
        assert_eq!(
            found_by("engine_remote_socket"),
            Some("engine_remote_socket")
        );
        assert_eq!(found_by("made up"), None);
    }

    /// The script under a real `sh`, with `id` but no docker CLI on its PATH.
    fn run_script(bin: &std::path::Path, env: &[(&str, &str)]) -> Vec<Candidate> {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(DISCOVERY_SCRIPT)
            .env_clear()
            .env("PATH", bin)
            .envs(env.iter().copied())
            .output()
            .expect("run /bin/sh");
        assert!(out.status.success(), "{out:?}");
        parse(&String::from_utf8_lossy(&out.stdout))
    }

    #[test]
    fn the_script_finds_a_rootless_socket_with_or_without_xdg_runtime_dir() {
        let dir = std::env::temp_dir().join(format!("fwd-discovery-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("podman")).expect("mkdir");
        let sock = dir.join("podman/podman.sock");
        let _ = std::fs::remove_file(&sock);
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        std::fs::write(dir.join("docker.sock"), "").expect("write");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let id = ["/usr/bin/id", "/bin/id"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("id(1)");
        let _ = std::fs::remove_file(bin.join("id"));
        std::os::unix::fs::symlink(id, bin.join("id")).expect("symlink");
        let xdg = dir.to_string_lossy().into_owned();
        let found = run_script(
            &bin,
            &[("XDG_RUNTIME_DIR", &xdg), ("DOCKER_HOST", "tcp://h:2375")],
        );
        let states: Vec<(Source, State)> = found.iter().map(|c| (c.source, c.state)).collect();
        assert_eq!(states[0], (Source::Env, State::Other), "{found:?}");
        assert_eq!(states[1], (Source::RootlessDocker, State::NotSocket));
        assert_eq!(states[2], (Source::RootlessPodman, State::Socket));
        assert_eq!(found[2].path, sock.to_string_lossy());
        // DOCKER_HOST names the engine: the rootless socket beside it is not taken.
        assert_eq!(named(&found).map(|c| c.source), Some(Source::Env));
        assert!(choose(&found).is_err());
        assert_eq!(
            choose(&found[1..]).map(|c| c.source),
            Ok(Source::RootlessPodman)
        );
        // No XDG_RUNTIME_DIR (an sshd without PAM): the user's /run/user/UID.
        let uid = String::from_utf8_lossy(
            &std::process::Command::new("id")
                .arg("-u")
                .output()
                .expect("id -u")
                .stdout,
        )
        .trim()
        .to_string();
        let found = run_script(&bin, &[]);
        let rootless: Vec<&str> = found
            .iter()
            .filter(|c| matches!(c.source, Source::RootlessDocker | Source::RootlessPodman))
            .map(|c| c.path.as_str())
            .collect();
        assert_eq!(
            rootless,
            [
                format!("/run/user/{uid}/docker.sock"),
                format!("/run/user/{uid}/podman/podman.sock")
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_script_is_one_constant_and_names_every_place() {
        for place in [
            "$DOCKER_HOST",
            "docker context inspect",
            "$XDG_RUNTIME_DIR",
            "/run/user/$(id -u)",
            "$r/docker.sock",
            "$r/podman/podman.sock",
            "/run/podman/podman.sock",
            "/var/run/docker.sock",
        ] {
            assert!(DISCOVERY_SCRIPT.contains(place), "{place}");
        }
    }
}
