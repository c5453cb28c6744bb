//! `fwdctl env`: what a client needs to use a host's remote engine through
//! fwdd's local socket, in the syntax of the shell or CI system at hand.
//!
//! - `DOCKER_HOST=unix://<runtime>/docker.sock` (or `docker-<host>.sock`);
//! - `TESTCONTAINERS_HOST_OVERRIDE=localhost`: published ports are
//!   forwarded to the runner's loopback, so that is where they answer;
//! - `TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE=<the engine's socket on the
//!   remote host>`: Ryuk mounts this path *on the Docker host*, where the
//!   local socket means nothing.

use fwd_proto::{HostStatus, Status};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `export NAME='value'` (sh, bash, zsh: `eval "$(fwdctl env)"`)
    Sh,
    /// `set -gx NAME 'value'` (fish: `fwdctl env --format fish | source`)
    Fish,
    /// `NAME=value` lines for `$GITHUB_ENV`
    Github,
    /// one JSON object
    Json,
}

/// Why `env` could not answer: the exit code and the message.
#[derive(Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub message: String,
}

/// The variables for `host` (default: the first host).
pub fn variables(
    st: &Status,
    host: Option<&str>,
) -> Result<Vec<(&'static str, String)>, Unavailable> {
    let h: &HostStatus = match host {
        Some(name) => st.hosts.iter().find(|h| h.name == name).ok_or_else(|| {
            let known: Vec<&str> = st.hosts.iter().map(|h| h.name.as_str()).collect();
            Unavailable {
                message: format!(
                    "no host named {name:?} (configured: {}); give one of those, or none for the first",
                    known.join(", ")
                ),
            }
        })?,
        None => st.hosts.first().ok_or_else(|| Unavailable {
            message: "fwdd has no hosts configured; add a [[host]] or --host".into(),
        })?,
    };
    let engine = h.engine.as_ref().ok_or_else(|| Unavailable {
        message: format!(
            "this fwdd ({}) serves no engine socket; upgrade it",
            st.daemon.version
        ),
    })?;
    // The host's own socket: docker.sock may move to another host on reload.
    let socket = engine
        .sockets
        .iter()
        .find(|p| p.ends_with(&format!("/docker-{}.sock", h.name)))
        .or_else(|| engine.sockets.first())
        .ok_or_else(|| Unavailable {
            message: format!(
                "host {} has no local engine socket: {}",
                h.name,
                engine.reason.as_deref().unwrap_or("unknown reason")
            ),
        })?;
    let mut vars = vec![
        ("DOCKER_HOST", format!("unix://{socket}")),
        ("TESTCONTAINERS_HOST_OVERRIDE", "localhost".to_string()),
    ];
    if let Some(remote) = &engine.remote_socket {
        vars.push(("TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE", remote.clone()));
    }
    Ok(vars)
}

/// The local socket `DOCKER_HOST` names, which fwdctl checks before it
/// prints it (`fwd_client::check_engine_socket`).
pub fn local_socket<'a>(vars: &'a [(&str, String)]) -> Option<&'a Path> {
    vars.iter()
        .find(|(k, _)| *k == "DOCKER_HOST")
        .and_then(|(_, v)| v.strip_prefix("unix://"))
        .map(Path::new)
}

/// The variables in `format`. Values are quoted for the shell; for
/// `$GITHUB_ENV` a value with a line break would forge a variable, so such
/// values are refused (socket paths never have one).
pub fn render(vars: &[(&str, String)], format: Format) -> Result<String, Unavailable> {
    if let Some((k, _)) = vars.iter().find(|(_, v)| v.contains(['\n', '\r', '\0'])) {
        return Err(Unavailable {
            message: format!("the value of {k} contains a line break; refusing to print it"),
        });
    }
    let quote = |v: &str| format!("'{}'", v.replace('\'', r"'\''"));
    let fish_quote = |v: &str| format!("'{}'", v.replace('\\', r"\\").replace('\'', r"\'"));
    Ok(match format {
        Format::Sh => vars
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", quote(v)))
            .collect(),
        Format::Fish => vars
            .iter()
            .map(|(k, v)| format!("set -gx {k} {}\n", fish_quote(v)))
            .collect(),
        Format::Github => vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect(),
        Format::Json => {
            let map: serde_json::Map<String, serde_json::Value> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
                .collect();
            format!("{}\n", serde_json::Value::Object(map))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = include_str!("../../fwd-proto/tests/golden/status.json");

    fn sample() -> Status {
        serde_json::from_str(GOLDEN).unwrap()
    }

    #[test]
    fn the_first_host_by_default_its_own_socket_and_the_remote_path() {
        let vars = variables(&sample(), None).unwrap();
        assert_eq!(
            vars,
            vec![
                (
                    "DOCKER_HOST",
                    "unix:///run/user/1000/fwd/docker-prod.sock".into()
                ),
                ("TESTCONTAINERS_HOST_OVERRIDE", "localhost".into()),
                (
                    "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE",
                    "/var/run/docker.sock".into()
                ),
            ]
        );
    }

    #[test]
    fn the_socket_checked_is_the_one_docker_host_names() {
        let vars = variables(&sample(), None).unwrap();
        assert_eq!(
            local_socket(&vars),
            Some(Path::new("/run/user/1000/fwd/docker-prod.sock"))
        );
        assert_eq!(
            local_socket(&[("DOCKER_HOST", "tcp://x:2375".into())]),
            None
        );
    }

    #[test]
    fn unknown_hosts_and_hosts_without_a_socket_say_why() {
        let err = variables(&sample(), Some("nope")).unwrap_err();
        assert!(err.message.contains("prod, staging"), "{}", err.message);
        let err = variables(&sample(), Some("staging")).unwrap_err();
        assert!(err.message.contains("upgrade"), "{}", err.message);
        let mut st = sample();
        let e = st.hosts[0].engine.as_mut().unwrap();
        e.sockets.clear();
        e.reason = Some("turned off (engine_socket = false)".into());
        let err = variables(&st, None).unwrap_err();
        assert!(err.message.contains("turned off"), "{}", err.message);
    }

    #[test]
    fn every_format_quotes_what_it_must() {
        let vars = vec![(
            "DOCKER_HOST",
            "unix:///tmp/it's here/docker.sock".to_string(),
        )];
        assert_eq!(
            render(&vars, Format::Sh).unwrap(),
            "export DOCKER_HOST='unix:///tmp/it'\\''s here/docker.sock'\n"
        );
        assert_eq!(
            render(&vars, Format::Fish).unwrap(),
            "set -gx DOCKER_HOST 'unix:///tmp/it\\'s here/docker.sock'\n"
        );
        assert_eq!(
            render(&vars, Format::Github).unwrap(),
            "DOCKER_HOST=unix:///tmp/it's here/docker.sock\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&vars, Format::Json).unwrap()).unwrap();
        assert_eq!(json["DOCKER_HOST"], "unix:///tmp/it's here/docker.sock");
        let forged = vec![("DOCKER_HOST", "x\nEVIL=1".to_string())];
        assert!(render(&forged, Format::Github).is_err());
    }

    #[test]
    fn sh_output_round_trips_through_a_real_shell() {
        let vars = vec![("FWD_T", "a 'b' $c `d` \\e".to_string())];
        let script = format!("{}printf %s \"$FWD_T\"", render(&vars, Format::Sh).unwrap());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a 'b' $c `d` \\e");
    }
}
