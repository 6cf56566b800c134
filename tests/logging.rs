//! The shipped binary's logs, as a cluster log pipeline receives them: stdout is a pipe, so text
//! lines carry no colour codes, and `--log-format json` gives one JSON object per line.

use trainjob_testbed::support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{Identity, bed};

const CONNECTED: &str = "connected; watching TrainJobs";

/// Kills the operator if a test fails halfway.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the operator binary against the bed with `--log-format format`, stops it with SIGTERM
/// as soon as it is connected (before its caches are filled: shutdown must still finish), and
/// returns every line it wrote to stdout.
fn logs(format: &str) -> Vec<String> {
    let kubeconfig = bed().kubeconfig_path(Identity::Operator);
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainjob-operator"));
    trainjob_testbed::die_with_parent(&mut command);
    let child = command
        .args([
            "run",
            "--http-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
            // Not the default 0.0.0.0:10443: test binaries run side by side.
            "--status-server-addr",
            "127.0.0.1:0",
            "--log-format",
            format,
        ])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the operator binary");
    let mut running = Running(child);
    let stdout = running.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !lines.iter().any(|l: &String| l.contains(CONNECTED)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(e) => panic!("no {CONNECTED:?} line within 30 s ({e}); got: {lines:#?}"),
        }
    }
    let pid = running.0.id().to_string();
    let term = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(term.success());
    // The reader ends when the process closes stdout.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        lines.push(line);
    }
    // The key scan reads these too.
    support::logs::record(&lines.join("\n"));
    let status = running.0.wait().expect("wait");
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status}; logs: {lines:#?}"
    );
    lines
}

#[test]
fn text_logs_have_no_colour_codes_when_stdout_is_not_a_terminal() {
    let lines = logs("text");
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "ANSI escape in {line:?}");
    }
    let connected = lines
        .iter()
        .find(|l| l.contains(CONNECTED))
        .expect("connected line");
    assert!(connected.contains(" INFO "), "{connected}");
    assert!(connected.contains("ssh_key_algorithm=ecdsa-p256"), "{connected}");
    assert!(lines.iter().any(|l| l.ends_with("stopped")), "{lines:#?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let lines = logs("json");
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for o in &objects {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(o.get(key).is_some(), "no {key} in {o}");
        }
    }
    let connected = objects
        .iter()
        .find(|o| o["message"] == CONNECTED)
        .expect("connected line");
    assert_eq!(connected["level"], "INFO");
    assert_eq!(connected["ssh_key_algorithm"], "ecdsa-p256");
    assert!(
        connected["server"]
            .as_str()
            .is_some_and(|s| s.starts_with("v1.36")),
        "{connected}"
    );
    assert!(objects.iter().any(|o| o["message"] == "stopped"), "{lines:#?}");
}
