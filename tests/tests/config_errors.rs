//! Bad configs are rejected before anything touches the kernel, with the
//! offending field (and line) named.

use std::process::Command;

use lb_tests::{PinDir, TempDir, daas_lb_bin};

fn rejected(yaml: &str, expect: &[&str]) {
    let tmp = TempDir::new();
    let pins = PinDir::new();
    let path = tmp.file("bad.yaml", yaml);
    // `check-config` first: it touches nothing, so a config wrongly
    // accepted fails here instead of starting a daemon (on the root cgroup:
    // these configs name none) that `run` would never leave.
    let check = Command::new(daas_lb_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run daas-lb check-config");
    assert!(!check.status.success(), "check-config accepted:\n{yaml}");
    let output = Command::new(daas_lb_bin())
        .args(["run", "--config"])
        .arg(&path)
        .arg("--bpffs-dir")
        .arg(pins.path())
        .output()
        .expect("run daas-lb");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted:\n{yaml}");
    for needle in expect {
        assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
    }
    assert!(
        !pins.path().exists(),
        "the kernel was touched before the config was validated"
    );
}

const HEAD: &str = "services:\n";

#[test]
fn unknown_field_is_named_with_its_line() {
    rejected(
        &format!("{HEAD}  - name: a\n    vip: 127.0.0.1:6444\n    servrs: [\"10.0.0.1:1\"]\n"),
        &["servrs", ":4"],
    );
}

#[test]
fn bad_address_is_named_with_its_line() {
    rejected(
        &format!(
            "{HEAD}  - name: a\n    vip: 127.0.0.1:6444\n    servers: [\"10.0.0.1:1\", \"10.0.0.300:1\"]\n"
        ),
        &["services[0].servers[1]", ":4"],
    );
    rejected(
        &format!("{HEAD}  - name: a\n    vip: localhost:6444\n    servers: []\n"),
        &["services[0].vip", ":3"],
    );
}

#[test]
fn duplicate_vip_is_rejected() {
    rejected(
        &format!(
            "{HEAD}  - name: a\n    vip: 127.0.0.1:6444\n    servers: []\n  - name: b\n    vip: 127.0.0.1:6444\n    servers: []\n"
        ),
        &["services[1].vip", "duplicate", ":6"],
    );
}

#[test]
fn mismatched_address_family_is_rejected() {
    rejected(
        &format!("{HEAD}  - name: a\n    vip: \"[::1]:6444\"\n    servers: [\"10.0.0.1:1\"]\n"),
        &["services[0].servers[0]", ":4"],
    );
}

#[test]
fn bad_duration_and_protocol_are_rejected() {
    rejected(
        &format!(
            "{HEAD}  - name: a\n    vip: 127.0.0.1:6444\n    protocol: sctp\n    servers: []\n"
        ),
        &["protocol", ":4"],
    );
    rejected(
        &format!(
            "{HEAD}  - name: a\n    vip: 127.0.0.1:6444\n    servers: []\n    health_check: {{ kind: tcp, interval: soon }}\n"
        ),
        &["interval", ":5"],
    );
}
