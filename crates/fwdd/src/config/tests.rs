//! The configuration's tests: loading, errors with their keys and lines,
//! rendering.

use super::names::{check_host_name, derived_host_name, HOST_NAME_MAX};
use super::settings::SocketGroup;
use super::*;
use std::time::Duration;

use fwd_ssh::parse_host_url;

#[test]
fn host_urls() {
    assert_eq!(
        parse_host_url("ssh://ci@docker-1:2222"),
        Ok(("ci@docker-1".into(), Some(2222)))
    );
    assert_eq!(parse_host_url("ssh://alias"), Ok(("alias".into(), None)));
    assert_eq!(
        parse_host_url("ssh://u@[fd00::1]:22"),
        Ok(("u@fd00::1".into(), Some(22)))
    );
    for bad in [
        "docker-1",
        "ssh://-oProxyCommand=x",
        "ssh://u@host:0",
        "ssh://u@host:99999",
        "ssh://a b@host",
        "ssh://u@ho;st",
        "ssh://",
    ] {
        assert!(parse_host_url(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn the_engine_socket_group_must_exist() {
    let c =
        load_toml("engine_socket_group = \"root\"\n[[host]]\nurl = \"ssh://h\"\n").expect("loads");
    assert_eq!(
        c.engine_socket_group,
        Some(SocketGroup {
            name: "root".into(),
            gid: 0
        })
    );
    assert!(render(&c).contains("\nengine_socket_group = \"root\"\n"));
    let e = load_toml("engine_socket_group = \"no-such-group-fwd\"\n[[host]]\nurl = \"ssh://h\"\n")
        .expect_err("refused");
    assert!(
        e.to_string()
            .contains("no group named \"no-such-group-fwd\""),
        "{e}"
    );
    let c = load_toml("[[host]]\nurl = \"ssh://h\"\n").expect("loads");
    assert_eq!(c.engine_socket_group, None);
}

/// Names are off unless a host asks; the range, the suffix and the hosts
/// file are checked with the fix in the message, and shown by check-config.
#[test]
fn names_settings_are_checked_and_shown() {
    let c = load_toml("[[host]]\nurl = \"ssh://h\"\n").expect("loads");
    assert!(!c.hosts[0].names);
    assert_eq!(c.names.range.to_string(), "127.77.0.0/16");
    assert_eq!(c.names.hosts_file, None);
    let c = load_toml(
        "names_range = \"127.99.0.0/24\"\nnames_suffix = \"Docker\"\nhosts_file = \"/etc/hosts\"\n\
         [[host]]\nurl = \"ssh://h\"\nnames = true\n",
    )
    .expect("loads");
    assert!(c.hosts[0].names);
    assert_eq!(c.names.suffix.as_deref(), Some("docker"));
    let shown = render(&c);
    for line in [
        "names_range = \"127.99.0.0/24\"",
        "names_suffix = \"docker\"",
        "hosts_file = \"/etc/hosts\"",
        "names = true",
    ] {
        assert!(shown.contains(line), "{line} not in {shown}");
    }
    for (bad, says) in [
        ("names_range = \"10.0.0.0/16\"", "not inside 127.0.0.0/8"),
        (
            "names_range = \"127.77.0.1/16\"",
            "did you mean 127.77.0.0/16",
        ),
        ("names_suffix = \"a b\"", "is not a host name"),
        ("hosts_file = \"etc/hosts\"", "not an absolute path"),
    ] {
        let e = load_toml(&format!("{bad}\n[[host]]\nurl = \"ssh://h\"\n")).expect_err(bad);
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
}

#[test]
fn the_startup_window_follows_connect_wait_and_can_be_turned_off() {
    let c = load_toml("connect_wait = \"7s\"\n[[host]]\nurl = \"ssh://h\"\n").expect("loads");
    assert_eq!(c.startup_window, Duration::from_secs(7));
    let c = load_toml("startup_window = \"0s\"\n[[host]]\nurl = \"ssh://h\"\n").expect("loads");
    assert_eq!(c.startup_window, Duration::ZERO);
    assert!(render(&c).contains("\nstartup_window = \"0s\"\n"));
    let e = load_toml("startup_window = \"soon\"\n[[host]]\nurl = \"ssh://h\"\n")
        .expect_err("not a duration");
    assert!(e.to_string().contains("startup_window"), "{e}");
}

fn load_toml(text: &str) -> Result<Config, ConfigError> {
    load_with(text, CliOverrides::default())
}

/// Loads `text` as the file, with the flags of `cli` over it.
fn load_with(text: &str, cli: CliOverrides) -> Result<Config, ConfigError> {
    // One directory per call: tests run in parallel and must not share a file.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fwdd.toml");
    std::fs::write(&path, text).expect("write config");
    Config::load(CliOverrides {
        config_file: Some(path),
        ..cli
    })
}

#[test]
fn a_host_name_is_a_name_not_a_path() {
    for good in [
        "ci",
        "ci-docker.2",
        "u@h:2222",
        "u@fd00::1:22",
        "x%eth0",
        &"a".repeat(64),
    ] {
        assert_eq!(check_host_name(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        "a/../../x",
        "a/b",
        "..",
        "a..b",
        ".hidden",
        "-x",
        "a b",
        "a\nb",
        "ä",
        &"a".repeat(65),
    ] {
        assert!(check_host_name(bad).is_err(), "{bad:?} accepted");
    }
    let e = load_toml("[[host]]\nname = \"a/../../x\"\nurl = \"ssh://h\"\n")
        .expect_err("a path as a name");
    assert!(
        e.to_string()
            .contains("host[0].name: \"a/../../x\" has '/'")
            && e.to_string().contains("e.g. name = \"ci-docker\""),
        "{e}"
    );
    let e = load_toml(&format!(
        "[[host]]\nurl = \"ssh://h\"\n[[host]]\nname = \"{}\"\nurl = \"ssh://h\"\n",
        "x".repeat(65)
    ))
    .expect_err("too long");
    assert!(
        e.to_string().contains("host[1].name: ") && e.to_string().contains("65 bytes long"),
        "{e}"
    );
}

#[test]
fn a_name_made_from_the_url_is_a_valid_name() {
    assert_eq!(
        derived_host_name("ci@docker-1", Some(2222)),
        "ci@docker-1:2222"
    );
    assert_eq!(derived_host_name("..", None), "_._");
    assert_eq!(derived_host_name("-x", None), "_-x");
    let long = format!("ci@{}.example.com", "a".repeat(80));
    let name = derived_host_name(&long, None);
    assert_eq!(check_host_name(&name), Ok(()));
    assert_eq!(name.len(), HOST_NAME_MAX);
    assert!(name.starts_with("ci@aaaa"), "{name}");
    // Stable, and distinct for names that share their first bytes.
    assert_eq!(derived_host_name(&long, None), name);
    assert_ne!(derived_host_name(&long, Some(22)), name);
    // A --host whose URL makes a bad name is served under a valid one.
    let c = Config::load(CliOverrides {
        hosts: vec![format!("ssh://{long}")],
        ..Default::default()
    })
    .expect("derived names are made valid");
    assert_eq!(c.hosts[0].name, name);
}

#[test]
fn file_config_with_defaults() {
    let c = load_toml("[[host]]\nurl = \"ssh://ci@h\"\nhealth_interval = \"2m\"\n").expect("valid");
    assert_eq!(c.hosts[0].health_interval, Duration::from_secs(120));
    assert_eq!(
        c.hosts[0].ssh.server_alive_interval,
        Duration::from_secs(15)
    );
    assert_eq!(c.hosts[0].ssh.strict_host_key_checking, "yes");
    assert_eq!(c.connect_wait, Duration::from_secs(10));
}

#[test]
fn file_errors_name_the_line() {
    let e = load_toml("# fwd\nconnect_wait = \"soon\"\n[[host]]\nurl = \"ssh://h\"\n")
        .expect_err("invalid");
    assert!(e.to_string().contains(".toml:2: connect_wait"), "{e}");
    let e = load_toml(
        "[[host]]\nurl = \"ssh://a\"\n\n[[host]]\nname = \"b\"\nurl = \"ssh://b\"\nhealth_interval = \"x\"\n",
    )
    .expect_err("invalid");
    assert!(
        e.to_string().contains(".toml:7: host[1].health_interval"),
        "{e}"
    );
    let e = load_toml(
        "[[host]]\nurl = \"ssh://a\"\n[[rule]]\nports = \"1\"\n[[rule]]\nports = \"x\"\n",
    )
    .expect_err("invalid");
    assert!(e.to_string().contains(".toml:6: rule[1].ports"), "{e}");
    // Syntax errors carry toml's own location.
    let e = load_toml("[[host]\n").expect_err("invalid");
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn rules_are_validated_with_their_keys() {
    let host = "[[host]]\nname = \"h\"\nurl = \"ssh://h\"\n";
    let c = load_toml(&format!(
        "{host}[[rule]]\nports = \"5432\"\nlocal_port = 15432\n[[rule]]\nlabel = \"team=x\"\naction = \"skip\"\n[[rule]]\nhost = \"h\"\nports = \"8000-8099\"\nbind = [\"0.0.0.0\"]\n"
    ))
    .expect("valid");
    assert_eq!(c.rules.rules.len(), 3);
    for (bad, key) in [
        (
            "[[rule]]\nports = \"8000-8099\"\nlocal_port = 1\n",
            "rule[0].local_port",
        ),
        ("[[rule]]\nports = \"99999\"\n", "rule[0].ports"),
        ("[[rule]]\naction = \"maybe\"\n", "rule[0].action"),
        ("[[rule]]\nbind = [\"localhost\"]\n", "rule[0].bind"),
        ("[[rule]]\nhost = \"nope\"\n", "rule[0].host"),
        ("[[rule]]\naction = \"skip\"\nlocal_port = 5\n", "rule[0]"),
    ] {
        let e = load_toml(&format!("{host}{bad}")).expect_err(bad);
        assert!(e.to_string().contains(key), "{bad}: {e}");
    }
}

/// Bad settings, each with what its error must say.
fn what_to_do_cases() -> Vec<(String, &'static str)> {
    let host = "[[host]]\nname = \"h\"\nurl = \"ssh://h\"\n";
    vec![
        (
            format!("{host}health_interval = \"5x\"\n"),
            ".toml:4: host[0].health_interval: \"5x\" is not a duration",
        ),
        (
            format!("{host}health_interval = \"5x\"\n"),
            "use a number with a unit such as \"15s\" or \"2m\"",
        ),
        (
            format!("connect_wait = \"0s\"\n{host}"),
            "\"0s\" is zero; use a duration greater than zero",
        ),
        (
            format!("log_format = \"xml\"\n{host}"),
            ".toml:1: log_format: \"xml\" is not a log format; use \"text\"",
        ),
        (
            format!("{host}[[rule]]\nhost = \"nope\"\n"),
            "use the name of a [[host]] (\"h\")",
        ),
        (
            format!("{host}[[rule]]\nports = \"9-1\"\n"),
            "write one port such as \"5432\" or a range",
        ),
        (
            format!("{host}[[rule]]\nlabel = \"=x\"\n"),
            "\"=x\" has no label key; write \"key\" or \"key=value\"",
        ),
        (
            format!("{host}[[rule]]\nbind = []\n"),
            "name at least one address such as \"127.0.0.1\"",
        ),
        (
            format!("{host}[[rule]]\nbind = [\"localhost\"]\n"),
            "host names are not resolved",
        ),
        (
            format!("{host}[[rule]]\nlocal_port = 5\n"),
            "the rule matches every port, which cannot all move to one local port",
        ),
        (
            format!("{host}[[rule]]\naction = \"skip\"\nbind = [\"::1\"]\n"),
            ".toml:4: rule[0]: a skip rule forwards nothing",
        ),
        (
            format!("{host}[[rule]]\naction = \"maybe\"\n"),
            "use \"forward\" or \"skip\"",
        ),
        (
            format!("retry_jitter = 2.0\n{host}"),
            "use a fraction such as 0.25",
        ),
        (
            format!("retry_first_delay = \"1m\"\nretry_max_delay = \"30s\"\n{host}"),
            "retry_first_delay: 1m is longer than retry_max_delay (30s); shorten",
        ),
        (
            format!("{host}strict_host_key_checking = \"maybe\"\n"),
            "use \"yes\"",
        ),
        (
            format!("{host}ssh_options = [\"-oX\"]\n"),
            "write e.g. \"Compression=no\"",
        ),
        (
            "[[host]]\nurl = \"ssh://u@[fd00::1\"\n".to_string(),
            "write an IPv6 address as ssh://user@[fd00::1]:22",
        ),
        (
            "[[host]]\nurl = \"ssh://h;x\"\n".to_string(),
            "is not a valid host name (letters, digits",
        ),
    ]
}

/// Each error says what is wrong and what to write instead.
#[test]
fn errors_say_what_to_do() {
    for (bad, says) in what_to_do_cases() {
        let e = load_toml(&bad).expect_err(&bad);
        assert!(e.to_string().contains(says), "{bad}: {e}");
    }
    let e = Config::load(CliOverrides {
        config_file: Some("/nonexistent/fwdd.toml".into()),
        ..Default::default()
    })
    .expect_err("missing file");
    assert!(
        e.to_string().contains("check the path given with --config"),
        "{e}"
    );
}

/// A bad --log-format is blamed on the flag, not on the file's log_format line.
#[test]
fn a_bad_flag_is_not_blamed_on_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fwdd.toml");
    std::fs::write(
        &path,
        "log_format = \"text\"\n[[host]]\nurl = \"ssh://h\"\n",
    )
    .expect("write");
    let e = Config::load(CliOverrides {
        config_file: Some(path),
        log_format: Some("xml".into()),
        ..Default::default()
    })
    .expect_err("invalid");
    assert!(
        e.to_string()
            .starts_with("invalid configuration: --log-format (or FWD_LOG_FORMAT): \"xml\""),
        "{e}"
    );
}

#[test]
fn errors_name_the_key() {
    let e = load_toml("[[host]]\nurl = \"ssh://h\"\nserver_alive_interval = \"soon\"\n")
        .expect_err("invalid");
    assert!(
        e.to_string().contains("host[0].server_alive_interval"),
        "{e}"
    );
    let e = load_toml("[[host]]\nurl = \"ssh://h\"\nbogus = 1\n").expect_err("invalid");
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = load_toml("connect_wait = \"0s\"\n[[host]]\nurl = \"ssh://h\"\n").expect_err("invalid");
    assert!(e.to_string().contains("connect_wait"), "{e}");
    let e =
        load_toml("[[host]]\nurl = \"ssh://h\"\n[[host]]\nurl = \"ssh://h\"\n").expect_err("dup");
    assert!(e.to_string().contains("twice"), "{e}");
    let e = load_toml("[[host]]\nurl = \"ssh://h\"\nssh_options = [\"ProxyCommand\"]\n")
        .expect_err("invalid");
    assert!(e.to_string().contains("ssh_options[0]"), "{e}");
}

mod render_tests {
    /// What check-config prints is itself a valid configuration that loads
    /// to the same settings.
    #[test]
    fn rendered_config_round_trips() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/fwdd.toml");
        let load = |p: std::path::PathBuf| {
            super::Config::load(super::CliOverrides {
                config_file: Some(p),
                ..Default::default()
            })
            .expect("valid")
        };
        let original = load(path);
        let text = super::render(&original);
        let dir = tempfile::tempdir().expect("temp dir");
        let copy = dir.path().join("rendered.toml");
        std::fs::write(&copy, &text).expect("write");
        let again = load(copy);
        assert_eq!(again.hosts, original.hosts, "{text}");
        assert_eq!(again.retry, original.retry, "{text}");
        assert_eq!(again.resync_interval, original.resync_interval);
        assert_eq!(again.rules, original.rules, "{text}");
        assert!(text.contains("\n# no [[rule]]"), "{text}");
        assert!(
            text.contains("\n# max_forwards: not set, no cap\n"),
            "{text}"
        );
    }

    /// Rules and max_forwards are shown too, and load back to the same settings.
    #[test]
    fn rules_and_max_forwards_are_rendered() {
        let dir = tempfile::tempdir().expect("temp dir");
        let load = |text: &str, name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            super::Config::load(super::CliOverrides {
                config_file: Some(path),
                ..Default::default()
            })
            .expect("valid")
        };
        let original = load(
            "[[rule]]\nports = \"5432\"\nlocal_port = 15432\n\
             [[rule]]\nhost = \"h\"\nports = \"8000-8099\"\nbind = [\"127.0.0.1\", \"::1\"]\n\
             [[rule]]\nlabel = \"team=x\"\nproject = \"shop\"\naction = \"skip\"\n\
             [[rule]]\nlabel = \"metrics\"\naction = \"skip\"\n\
             [[host]]\nname = \"h\"\nurl = \"ssh://h\"\nmax_forwards = 50\n",
            "rules.toml",
        );
        let text = super::render(&original);
        for line in [
            "\n[[rule]]\nports = \"5432\"\naction = \"forward\"\nlocal_port = 15432\n",
            "\n[[rule]]\nhost = \"h\"\nports = \"8000-8099\"\naction = \"forward\"\nbind = [\"127.0.0.1\", \"::1\"]\n",
            "\n[[rule]]\nlabel = \"team=x\"\nproject = \"shop\"\naction = \"skip\"\n",
            "\n[[rule]]\nlabel = \"metrics\"\naction = \"skip\"\n",
            "\nmax_forwards = 50\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("# no [[rule]]"), "{text}");
        let again = load(&text, "rendered.toml");
        assert_eq!(again.rules, original.rules, "{text}");
        assert_eq!(again.hosts, original.hosts, "{text}");
    }
}

mod metrics_config {
    use super::load_toml as load;

    #[test]
    fn an_address_off_or_an_error() {
        let host = "[[host]]\nurl = \"ssh://h\"\n";
        assert_eq!(load(host).expect("valid").metrics, None);
        let c = load(&format!("metrics = \"127.0.0.1:9633\"\n{host}")).expect("valid");
        assert_eq!(c.metrics, Some("127.0.0.1:9633".parse().expect("addr")));
        let again = load(&super::render(&c)).expect("rendered config loads");
        assert_eq!(again.metrics, c.metrics);
        assert_eq!(
            load(&format!("metrics = \"off\"\n{host}"))
                .expect("valid")
                .metrics,
            None
        );
        let e = load(&format!("metrics = \"localhost\"\n{host}"))
            .expect_err("no port")
            .to_string();
        assert!(e.contains("127.0.0.1:9633"), "{e}");
    }
}

mod expose_config {
    use super::load_toml as load;

    #[test]
    fn entries_scopes_and_errors() {
        let c = load(
            "[[host]]\nurl = \"ssh://h\"\nexpose = [18080, \"8080:3000\", \"9000:[::1]:9001\"]\n\
             expose_on = [\"gateway\", \"172.18.0.1\"]\n",
        )
        .expect("valid");
        let h = &c.hosts[0];
        let shown: Vec<String> = h.expose.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "18080 → 127.0.0.1:18080",
                "8080 → 127.0.0.1:3000",
                "9000 → [::1]:9001"
            ]
        );
        assert_eq!(h.expose_on.len(), 2);
        // Rendered and loaded back: the same.
        let again = load(&super::render(&c)).expect("rendered config loads");
        assert_eq!(again.hosts[0].expose, h.expose);
        assert_eq!(again.hosts[0].expose_on, h.expose_on);
        // Not given: nothing exposed, the gateway as the place.
        let plain = load("[[host]]\nurl = \"ssh://h\"\n").expect("valid");
        assert!(plain.hosts[0].expose.is_empty());
        assert_eq!(plain.hosts[0].expose_on, [fwd_core::BindScope::Gateway]);

        for (text, says) in [
            (
                "expose = [0]",
                "host[0].expose[0]: expose entry \"0\": the runner port is 0",
            ),
            ("expose = [\"a:b\"]", "not a runner port"),
            ("expose = [1, \"1:2\"]", "remote port 1 is exposed twice"),
            ("expose = [\"1:db.internal:5432\"]", "not an IP address"),
            ("expose_on = []", "expose_on is empty"),
            ("expose_on = [\"everywhere\"]", "host[0].expose_on[0]"),
        ] {
            let e = load(&format!("[[host]]\nurl = \"ssh://h\"\n{text}\n"))
                .expect_err(text)
                .to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    /// A reload that changes only the exposures keeps the host's master.
    #[test]
    fn exposures_are_not_part_of_the_connection() {
        let a = load("[[host]]\nurl = \"ssh://h\"\nexpose = [1]\n").expect("valid");
        let b = load("[[host]]\nurl = \"ssh://h\"\nexpose = [2]\nexpose_on = [\"loopback\"]\n")
            .expect("valid");
        assert_ne!(a.hosts[0], b.hosts[0]);
        assert_eq!(a.hosts[0].connection(), b.hosts[0].connection());
        let c = load("[[host]]\nurl = \"ssh://h:2222\"\nexpose = [1]\n").expect("valid");
        assert_ne!(a.hosts[0].connection(), c.hosts[0].connection());
    }
}

mod example_config {
    /// The documented example must stay valid.
    #[test]
    fn example_file_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/fwdd.toml");
        let c = super::Config::load(super::CliOverrides {
            config_file: Some(path),
            ..Default::default()
        })
        .expect("config/fwdd.toml is valid");
        assert_eq!(c.hosts[0].name, "ci-docker");
        assert_eq!(c.hosts[0].ssh.destination, "ci@docker-1.example.com");
    }
}

mod limits_config {
    use super::load_toml as load;

    #[test]
    fn caps_are_read_rendered_and_zero_is_refused() {
        let host = "[[host]]\nurl = \"ssh://h\"\n";
        let unset = load(host).expect("valid");
        assert_eq!(unset.limits, fwd_core::LimitSettings::default());
        let text = super::render(&unset);
        assert!(
            text.contains(
                "\n# max_tunnels_per_forward: not set, derived from the open-files limit"
            ),
            "{text}"
        );
        let set = load(&format!(
            "max_forwards_per_container = 100\nmax_forwards_total = 150\nmax_tunnels_per_forward = 200\n\
             max_tunnels_per_exposure = 300\nmax_engine_clients = 40\n{host}"
        ))
        .expect("valid");
        assert_eq!(
            set.limits,
            fwd_core::LimitSettings {
                forwards_per_container: Some(100),
                forwards_total: Some(150),
                tunnels_per_forward: Some(200),
                tunnels_per_exposure: Some(300),
                engine_clients: Some(40),
            }
        );
        let text = super::render(&set);
        assert!(text.contains("\nmax_engine_clients = 40\n"), "{text}");
        let e = load(&format!("max_engine_clients = 0\n{host}")).expect_err("zero");
        assert!(e.to_string().contains("max_engine_clients: 0"), "{e}");
    }
}

mod typed_errors {
    use super::super::error::Place;
    use super::*;

    fn line_of(e: &ConfigError) -> Option<usize> {
        match &e.place {
            Some(Place::Line(_, line)) => Some(*line),
            _ => None,
        }
    }

    /// An error carries its key path and the span of the value, which
    /// names the line: no message is parsed back.
    #[test]
    fn an_error_carries_its_key_and_span() {
        let text = "[[host]]\nurl = \"ssh://a\"\n[[host]]\nname = \"b\"\nurl = \"ssh://b;x\"\n";
        let e = load_with(text, CliOverrides::default()).expect_err("bad url");
        assert_eq!(e.key.as_deref(), Some("host[1].url"));
        let span = e.span.clone().expect("a span");
        assert_eq!(&text[span], "\"ssh://b;x\"");
        assert_eq!(line_of(&e), Some(5));
        // An element of a list written over several lines: its own line.
        let text = "[[host]]\nurl = \"ssh://h\"\nssh_options = [\n  \"A=b\",\n  \"bad\",\n]\n";
        let e = load_with(text, CliOverrides::default()).expect_err("bad option");
        assert_eq!(e.key.as_deref(), Some("host[0].ssh_options[1]"));
        assert_eq!(line_of(&e), Some(5));
        assert!(
            e.to_string()
                .contains("fwdd.toml:5: host[0].ssh_options[1]: \"bad\""),
            "{e}"
        );
    }

    /// A value from a flag (or its FWD_* variable) is blamed on the flag and
    /// never on a line of the file, even one that sets the same key.
    #[test]
    fn flags_keep_their_own_names() {
        let text = "metrics = \"127.0.0.1:9633\"\n[[host]]\nurl = \"ssh://h\"\n";
        let e = load_with(
            text,
            CliOverrides {
                hosts: vec!["ssh://-oProxyCommand=x".into()],
                ..Default::default()
            },
        )
        .expect_err("bad --host");
        assert_eq!(e.key.as_deref(), Some("--host #1.url"));
        assert_eq!((e.span.clone(), line_of(&e)), (None, None));
        assert!(
            e.to_string()
                .starts_with("invalid configuration: --host #1.url: "),
            "{e}"
        );
        let e = load_with(
            text,
            CliOverrides {
                metrics: Some("nowhere".into()),
                ..Default::default()
            },
        )
        .expect_err("bad --metrics");
        assert!(
            e.to_string()
                .starts_with("invalid configuration: --metrics (or FWD_METRICS): \"nowhere\""),
            "{e}"
        );
    }

    /// A host configured twice is shown at the second one's table.
    #[test]
    fn a_duplicate_host_names_its_table() {
        let e = load_with(
            "[[host]]\nurl = \"ssh://h\"\n\n[[host]]\nurl = \"ssh://h\"\n",
            CliOverrides::default(),
        )
        .expect_err("dup");
        assert_eq!(line_of(&e), Some(4));
        assert!(
            e.to_string()
                .contains("fwdd.toml:4: host \"h\" is configured twice"),
            "{e}"
        );
    }

    /// toml's own errors keep toml's account: line, column and the text.
    #[test]
    fn toml_errors_keep_their_line_and_column() {
        let e = load_with("[[host]]\nurl = 5\n", CliOverrides::default()).expect_err("type");
        let text = e.to_string();
        assert!(
            text.contains("fwdd.toml: TOML parse error at line 2, column 7"),
            "{text}"
        );
        assert!(text.contains("expected a string"), "{text}");
        assert_eq!(e.span, Some(15..16));
    }

    /// The remote socket path follows the one rule (fwd_core::paths), and
    /// the message says which part failed.
    #[test]
    fn engine_remote_socket_is_a_remote_path() {
        let host = "[[host]]\nurl = \"ssh://h\"\n";
        let c = load_with(
            &format!("{host}engine_remote_socket = \"/run/docker.sock\"\n"),
            CliOverrides::default(),
        )
        .expect("valid");
        assert_eq!(
            c.hosts[0].engine_remote_socket.as_deref(),
            Some("/run/docker.sock")
        );
        for (value, says) in [
            ("docker.sock", "is not an absolute path"),
            ("/run/a\\nb", "has a control character"),
        ] {
            let e = load_with(
                &format!("{host}engine_remote_socket = \"{value}\"\n"),
                CliOverrides::default(),
            )
            .expect_err(value);
            let text = e.to_string();
            assert!(
                text.contains("fwdd.toml:3: host[0].engine_remote_socket: "),
                "{text}"
            );
            assert!(
                text.contains(says) && text.contains("e.g. \"/var/run/docker.sock\""),
                "{text}"
            );
        }
    }
}
