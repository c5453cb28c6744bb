//! Fuzzing `expose` entries and `expose_on` scopes (`fwd_core::expose`):
//! what the configuration and `fwdctl expose` accept (tests/fuzz/corpus/
//! expose: the documented examples), parsed as is, then mutated. An entry
//! that parses names ports in range and prints back to itself; one that
//! does not is an error that names the grammar on one line, without a raw
//! control character of the entry in it.

#[path = "../../../tests/fuzz/mutate.rs"]
mod mutate;

use std::net::{IpAddr, SocketAddr};

use fwd_core::{parse_bind_scope, parse_expose, remote_binds, BindScope, ExposeSpec};
use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let root = mutate::repo_root(env!("CARGO_MANIFEST_DIR"));
    mutate::seeds_in(&root.join("tests/fuzz/corpus/expose"))
}

#[test]
fn every_seed_is_an_entry_or_a_scope() {
    for seed in corpus() {
        let s = String::from_utf8(seed).expect("text");
        assert!(
            parse_expose(&s).is_ok() || parse_bind_scope(&s).is_ok(),
            "{s:?}"
        );
    }
}

fn check_entry(entry: &str) -> Result<Option<ExposeSpec>, TestCaseError> {
    match parse_expose(entry) {
        Ok(spec) => {
            prop_assert!(spec.remote_port != 0 && spec.target.port() != 0, "{spec:?}");
            // `target` prints as IP:PORT, or [IPv6]:PORT: the long form.
            let long = format!("{}:{}", spec.remote_port, spec.target);
            prop_assert_eq!(parse_expose(&long), Ok(spec.clone()));
            Ok(Some(spec))
        }
        Err(why) => {
            prop_assert!(!why.chars().any(char::is_control), "{why:?}");
            prop_assert!(why.contains("REMOTE_PORT:RUNNER_PORT"), "{why}");
            Ok(None)
        }
    }
}

fn check_scope(s: &str) -> Result<(), TestCaseError> {
    match parse_bind_scope(s) {
        Ok(scope) => {
            prop_assert_eq!(parse_bind_scope(&scope.to_string()), Ok(scope));
        }
        Err(why) => prop_assert!(!why.chars().any(char::is_control), "{why:?}"),
    }
    Ok(())
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u16; 8]>().prop_map(IpAddr::from),
    ]
}

proptest! {
    #![proptest_config(mutate::config(16384))]

    #[test]
    fn mutated_entries_and_scopes(input in mutate::mutated(corpus(), 6, 80)) {
        let s = String::from_utf8_lossy(&input);
        check_entry(&s)?;
        check_scope(&s)?;
    }

    /// Every written form of an entry means what it says.
    #[test]
    fn written_entries_mean_what_they_say(
        remote in 1u16..,
        runner in 1u16..,
        ip in any_ip(),
        form in 0..4,
        pad in "[ \t]{0,2}",
    ) {
        let (entry, want) = match form {
            0 => (format!("{runner}"), SocketAddr::new([127, 0, 0, 1].into(), runner)),
            1 => (format!("{remote}:{runner}"), SocketAddr::new([127, 0, 0, 1].into(), runner)),
            2 => (format!("{remote}:localhost:{runner}"), SocketAddr::new([127, 0, 0, 1].into(), runner)),
            _ => (format!("{remote}:{}", SocketAddr::new(ip, runner)), SocketAddr::new(ip, runner)),
        };
        let spec = check_entry(&format!("{pad}{entry}{pad}"))?;
        let remote = if form == 0 { runner } else { remote };
        prop_assert_eq!(spec, Some(ExposeSpec { remote_port: remote, target: want }));
    }

    /// Scopes, parsed or not, and the binds they give: each once, each an
    /// address sshd can be given (or `*`), each verifiable.
    #[test]
    fn scopes_give_binds_each_once(
        scopes in proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(vec!["gateway", "loopback", "all"]).prop_map(String::from),
                any_ip().prop_map(|ip| ip.to_string()),
                "\\PC{0,16}",
            ],
            0..6,
        ),
        gateway in proptest::option::of(any_ip()),
    ) {
        for s in &scopes {
            check_scope(s)?;
        }
        let scopes: Vec<BindScope> = scopes.iter().filter_map(|s| parse_bind_scope(s).ok()).collect();
        let gateway = gateway.ok_or("the engine reported no gateway");
        match remote_binds(&scopes, gateway) {
            Ok(binds) => {
                prop_assert!(gateway.is_ok() || !scopes.contains(&BindScope::Gateway));
                for (i, b) in binds.iter().enumerate() {
                    prop_assert!(!binds[..i].contains(b), "{b:?} twice");
                    prop_assert!(b.listen == "*" || b.listen.parse::<IpAddr>().is_ok(), "{b:?}");
                }
            }
            // Only the gateway's address, asked of the engine, can be
            // missing (or refused).
            Err(why) => {
                let asks = scopes.contains(&BindScope::Gateway) || scopes.contains(&BindScope::All);
                prop_assert!(asks, "{why}");
                prop_assert!(!why.chars().any(char::is_control), "{why:?}");
            }
        }
    }
}
