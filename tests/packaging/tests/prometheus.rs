//! The alert rules shipped in packaging/prometheus: `promtool check rules`
//! accepts them, their unit tests (`*.test.yml`) pass under `promtool test
//! rules`, and every metric they use is one fwdd exposes.

use std::process::Command;

use fwd_packaging_tests::{require_tool, run_ok, workspace};

fn rules_dir() -> std::path::PathBuf {
    workspace().join("packaging/prometheus")
}

#[test]
fn promtool_checks_the_rules_and_runs_their_tests() {
    let Some(promtool) = require_tool("promtool", "prometheus") else {
        return;
    };
    let dir = rules_dir();
    let out =
        run_ok(
            Command::new(&promtool)
                .current_dir(&dir)
                .args(["check", "rules", "fwd.rules.yml"]),
        );
    assert!(out.contains("SUCCESS"), "{out}");
    let mut tests: Vec<_> = std::fs::read_dir(&dir)
        .expect("read packaging/prometheus")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("test") && n.ends_with(".yml"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no rule tests in {}", dir.display());
    let out = run_ok(
        Command::new(&promtool)
            .current_dir(&dir)
            .args(["test", "rules"])
            .args(&tests),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A rule about a metric fwdd does not expose would never fire.
#[test]
fn the_rules_use_only_metrics_fwdd_exposes() {
    let rules = std::fs::read_to_string(rules_dir().join("fwd.rules.yml")).expect("rules");
    let exposed = [
        "fwd_master_connected",
        "fwd_event_stream_up",
        "fwd_host_reconnects_total",
        "fwd_forwards",
        "fwd_exposures",
        "fwd_host_up",
        "fwd_open_files",
        "fwd_open_files_limit",
        "fwd_connections_refused_total",
        "fwd_names",
        "fwd_udp_forwards",
    ];
    let source = std::fs::read_to_string(workspace().join("crates/fwd-metrics/src/exposition.rs"))
        .expect("exposition.rs");
    for line in rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
    {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("fwd_") {
                assert!(
                    exposed.contains(&word),
                    "{word} in {line:?} is not a known fwd metric"
                );
                let family = word.strip_suffix("_total").unwrap_or(word);
                assert!(
                    source.contains(&format!("\"{family}\"")),
                    "{family} is not encoded by fwd-metrics"
                );
            }
        }
    }
}
