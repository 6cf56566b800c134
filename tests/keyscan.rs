//! No private key anywhere: every test binary with a control plane leaves a report of its key
//! scan (`support::logs::scan_keys_at_exit`: every private key the operator wrote, looked for in
//! every other request body it sent, which holds every Event, status and condition, and in all
//! its log lines). `make test` runs this binary last and it reads them all. It first shows that
//! the scanner does find a planted key.

use trainjob_testbed::support;

use base64::Engine;
use serde_json::json;
use trainjob_testbed::keyscan::{Report, scan};

/// Test binaries that start no control plane, so leave no report.
const NO_BED: [&str; 3] = ["keyscan", "packaging", "properties"];

#[test]
fn the_scanner_finds_a_key_planted_in_an_event_and_in_a_log_line() {
    let key = ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
        .expect("key")
        .to_openssh(ssh_key::LineEnding::LF)
        .expect("pem");
    let stored = base64::engine::general_purpose::STANDARD.encode(key.as_bytes());
    let body_line = key.lines().nth(1).expect("a body line").to_string();
    let audit = [
        json!({"verb": "create", "objectRef": {"resource": "secrets", "namespace": "ns", "name": "pi-mpi-ssh-auth"},
            "requestObject": {"data": {"ssh-privatekey": stored}}}),
        json!({"verb": "create", "objectRef": {"resource": "events", "namespace": "ns", "name": "e1"},
            "requestObject": {"note": format!("oops {body_line}")}}),
        json!({"verb": "patch", "objectRef": {"resource": "trainjobs", "namespace": "ns", "name": "pi"},
            "requestObject": {"status": {"conditions": [{"message": "fine"}]}}}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect::<Vec<_>>()
    .join("\n");
    let logs = vec!["all good".to_string(), format!("leaked {}", &stored[10..82])];
    let report = scan(&audit, &logs);
    assert_eq!(
        report,
        Report {
            keys: 1,
            audit_entries: 2,
            log_lines: 2,
            hits: vec!["audit: create events ns/e1".into(), "log line 2".into()],
        }
    );
}

#[test]
fn no_private_key_material_anywhere() {
    let dir = support::logs::keyscan_dir();
    let tests = trainjob_testbed::repo_root().join("tests");
    let mut expected: Vec<String> = std::fs::read_dir(&tests)
        .expect("tests/")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_stem()?.to_str()?.to_string();
            let text = std::fs::read_to_string(&path).ok()?;
            let bed = text.contains("\nuse trainjob_testbed::support;");
            (path.extension()? == "rs" && bed && !NO_BED.contains(&name.as_str())).then_some(name)
        })
        .collect();
    expected.sort();
    assert!(
        expected.len() >= 10,
        "test binaries with a bed found in tests/: {expected:?}"
    );
    let mut missing = Vec::new();
    let (mut keys, mut entries, mut lines) = (0, 0, 0);
    let mut hits = Vec::new();
    for binary in &expected {
        let path = dir.join(format!("{binary}.json"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            missing.push(binary.clone());
            continue;
        };
        let report: Report = serde_json::from_str(&text).expect("report");
        keys += report.keys;
        entries += report.audit_entries;
        lines += report.log_lines;
        hits.extend(report.hits.into_iter().map(|h| format!("{binary}: {h}")));
    }
    assert!(
        missing.is_empty(),
        "no key-scan report from {missing:?} in {}: run the whole suite first (make test)",
        dir.display()
    );
    assert!(hits.is_empty(), "private-key material found at: {hits:#?}");
    // The scan had something to look for, and somewhere to look.
    assert!(keys > 10, "only {keys} keys across {expected:?}");
    assert!(
        entries > 500 && lines > 300,
        "{entries} audit entries, {lines} log lines"
    );
    eprintln!(
        "key scan: {keys} private keys, {entries} audit entries, {lines} log lines, {} test binaries: clean",
        expected.len()
    );
}
