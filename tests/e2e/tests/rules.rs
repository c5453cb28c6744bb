//! Forwarding rules against real containers: remaps by rule and by label,
//! skips by rule and by label, and the per-host cap. Host ports 20250-20269.

mod common;

use common::Fwdd;
use fwd_e2e::{Sandbox, TestHost, LABEL_KEY};
use fwd_proto::ForwardState;

#[test]
fn rules_and_labels_decide_what_is_forwarded_where() {
    let Some(sb) = Sandbox::get() else { return };
    let host = TestHost::new(sb, "rules");
    let cfg = host.ssh_config.display();
    // Only this test's containers (the engine is shared), at most 3 forwards.
    let fwdd = Fwdd::spawn_with_config(
        &host,
        &format!(
            "[[rule]]\nports = \"20250\"\nlocal_port = 21250\n\n\
             [[rule]]\nports = \"20251\"\naction = \"skip\"\n\n\
             [[rule]]\nlabel = \"{LABEL_KEY}={label}\"\n\n\
             [[rule]]\naction = \"skip\"\n\n\
             [[host]]\nurl = \"ssh://{alias}\"\nssh_config = \"{cfg}\"\nmax_forwards = 3\n",
            label = host.label,
            alias = host.alias,
        ),
    );
    fwdd.wait_connected();
    host.httpd(&["20250:8080", "20251:8080"]);
    // Remapped by rule: served on 21250, not on 20250.
    assert_eq!(fwdd.wait_http(21250), "hello\n");
    assert!(host.connect(20250).is_err());
    // Skipped by rule.
    assert!(fwdd.forward(20251).is_none());
    assert!(host.connect(20251).is_err());
    // Opted out by label; remapped by label.
    host.httpd_with(&["--label", "fwd.enable=false", "-p", "20252:8080"]);
    host.httpd_with(&["--label", "fwd.port.20253=21253", "-p", "20253:8080"]);
    assert_eq!(fwdd.wait_http(21253), "hello\n");
    assert!(fwdd.forward(20252).is_none());
    // Two more ports: the cap of 3 lets one through and reports the other.
    host.httpd(&["20254:8080"]);
    assert_eq!(fwdd.wait_http(20254), "hello\n");
    host.httpd(&["20255:8080"]);
    let capped = fwdd.wait_forward_state(20255, ForwardState::Conflict);
    assert!(
        capped
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("max_forwards"),
        "{capped:?}"
    );
    assert!(host.connect(20255).is_err());
}
