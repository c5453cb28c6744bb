//! The LaunchAgent plist parses, runs `fwdd` with arguments fwdd knows, and
//! its log file is the one the newsyslog snippet rotates.

use std::path::PathBuf;

use fwd_packaging_tests::{fwdd_help, workspace};
use plist::{Dictionary, Value};

fn agent() -> Dictionary {
    let path = workspace().join("launchd/com.fwd.fwdd.plist");
    Value::from_file(&path)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        .into_dictionary()
        .expect("the plist's top level is a dict")
}

fn string<'a>(d: &'a Dictionary, key: &str) -> &'a str {
    d.get(key)
        .and_then(Value::as_string)
        .unwrap_or_else(|| panic!("{key} is not a string"))
}

fn program_arguments(d: &Dictionary) -> Vec<String> {
    d.get("ProgramArguments")
        .and_then(Value::as_array)
        .expect("ProgramArguments array")
        .iter()
        .map(|v| v.as_string().expect("string argument").to_string())
        .collect()
}

#[test]
fn runs_fwdd_with_known_arguments() {
    let d = agent();
    assert_eq!(string(&d, "Label"), "com.fwd.fwdd");
    assert!(
        d.get("Program").is_none(),
        "Program would override ProgramArguments[0]"
    );
    let args = program_arguments(&d);
    let program = PathBuf::from(&args[0]);
    assert!(
        program.is_absolute(),
        "launchd needs an absolute path: {}",
        args[0]
    );
    assert_eq!(program.file_name().and_then(|n| n.to_str()), Some("fwdd"));
    let problems = fwdd_help().check_args(&args[1..]);
    assert!(
        problems.is_empty(),
        "ProgramArguments {args:?}: {problems:?}"
    );
    let config = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("--config FILE");
    // launchd expands neither ~ nor $HOME: the install step replaces @HOME@.
    assert!(config.starts_with("@HOME@/"), "{config}");
    for a in &args {
        assert!(
            !a.contains('~') && !a.contains('$'),
            "launchd would not expand {a}"
        );
    }
}

#[test]
fn restarts_and_logs_like_a_daemon() {
    let d = agent();
    let keep_alive = d
        .get("KeepAlive")
        .and_then(Value::as_dictionary)
        .expect("KeepAlive dict");
    assert_eq!(
        keep_alive.get("SuccessfulExit").and_then(Value::as_boolean),
        Some(false)
    );
    assert_eq!(d.get("RunAtLoad").and_then(Value::as_boolean), Some(true));
    assert_eq!(
        d.get("ThrottleInterval").and_then(Value::as_signed_integer),
        Some(10)
    );
    for key in ["StandardOutPath", "StandardErrorPath"] {
        let p = string(&d, key);
        assert!(p.starts_with("@HOME@/Library/Logs/fwd/"), "{key} = {p}");
    }
    let env = d
        .get("EnvironmentVariables")
        .and_then(Value::as_dictionary)
        .expect("EnvironmentVariables");
    let path = env.get("PATH").and_then(Value::as_string).expect("PATH");
    assert!(
        path.split(':').any(|p| p == "/usr/bin"),
        "ssh lives in /usr/bin: {path}"
    );
}

#[test]
fn installed_copy_has_no_template_left() {
    let text = std::fs::read_to_string(workspace().join("launchd/com.fwd.fwdd.plist")).unwrap();
    let rendered = text.replace("@HOME@", "/Users/ci");
    assert!(!rendered.contains('@'), "unreplaced template token");
    let d = Value::from_reader_xml(rendered.as_bytes())
        .expect("rendered plist parses")
        .into_dictionary()
        .unwrap();
    assert_eq!(
        program_arguments(&d)[2],
        "/Users/ci/.config/fwd/fwdd.toml",
        "the config path after the install step"
    );
}

#[test]
fn newsyslog_rotates_the_agent_log() {
    let d = agent();
    let log = string(&d, "StandardErrorPath").replace("@HOME@", "/Users/USER");
    let conf = std::fs::read_to_string(workspace().join("launchd/fwdd.newsyslog.conf")).unwrap();
    let rules: Vec<Vec<&str>> = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    let r = &rules[0];
    // logfilename owner:group mode count size when flags
    assert_eq!(r.len(), 7, "fields: {r:?}");
    assert_eq!(r[0], log, "the rule must name the agent's log file");
    assert_eq!(
        r[1], "USER:staff",
        "new files must stay writable by the agent's user"
    );
    assert!(r[3].parse::<u32>().is_ok_and(|n| n >= 1), "count {}", r[3]);
    assert!(r[4].parse::<u32>().is_ok_and(|kb| kb > 0), "size {}", r[4]);
    assert!(
        r[6].contains('N'),
        "no signal: fwdd treats SIGHUP as reload"
    );
    assert!(
        !r[6].contains('Z') && !r[6].contains('J'),
        "compressing would unlink the file fwdd still writes"
    );
}
