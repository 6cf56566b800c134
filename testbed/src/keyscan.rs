//! The suite-wide private-key scan. Every private key the operator wrote (SSH keys and the
//! webhook's serving key, taken from its Secret requests in the API server's audit log) is looked
//! for, line by line, in everything else it wrote (Events, statuses and their conditions, pods,
//! ConfigMaps, Services, NetworkPolicies, gang objects) and in its own log lines. Reports say where
//! a hit is, never what it is.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Data keys of Secrets that hold private keys.
const KEY_FIELDS: [&str; 2] = ["ssh-privatekey", "tls.key"];
/// Text every PEM private key carries (`-----BEGIN … PRIVATE KEY-----`).
const MARKER: &str = "PRIVATE KEY-----";
/// Shortest stretch of a key worth looking for: long enough never to occur by chance.
const MIN_NEEDLE: usize = 24;

/// What one test binary's scan found.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    /// Private keys found in Secret requests (the needles).
    pub keys: usize,
    /// Audit entries scanned (every request of the operator except Secret writes).
    pub audit_entries: usize,
    /// Operator log lines scanned.
    pub log_lines: usize,
    /// Where key material turned up: `audit: <verb> <resource> <namespace>/<name>` or
    /// `log line <n>`.
    pub hits: Vec<String>,
}

/// Scans `audit_log` (JSON lines) and `logs`.
pub fn scan(audit_log: &str, logs: &[String]) -> Report {
    let mut needles = BTreeSet::new();
    let mut haystack = Vec::new();
    for line in audit_log.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let object = &event["objectRef"];
        if object["resource"] == "secrets" {
            let data = &event["requestObject"]["data"];
            for field in KEY_FIELDS {
                if let Some(stored) = data[field].as_str() {
                    needles.extend(key_needles(stored));
                }
            }
            continue;
        }
        let place = format!(
            "audit: {} {} {}/{}",
            event["verb"].as_str().unwrap_or_default(),
            object["resource"].as_str().unwrap_or_default(),
            object["namespace"].as_str().unwrap_or_default(),
            object["name"].as_str().unwrap_or_default(),
        );
        haystack.push((place, line));
    }
    let keys = needles.len();
    let patterns = needles.into_iter().flatten().chain([MARKER.to_string()]);
    // Thousands of needles over megabytes: one automaton, one pass per text.
    let matcher = match aho_corasick::AhoCorasick::new(patterns) {
        Ok(m) => m,
        Err(e) => {
            return Report {
                hits: vec![format!("the scanner could not be built: {e}")],
                ..Report::default()
            };
        }
    };
    let audit_entries = haystack.len();
    let lines = logs
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("log line {}", i + 1), l.as_str()));
    let hits = haystack
        .into_iter()
        .chain(lines)
        .filter(|(_, text)| matcher.is_match(text))
        .map(|(place, _)| place)
        .collect();
    Report {
        keys,
        audit_entries,
        log_lines: logs.len(),
        hits,
    }
}

/// The stretches of one key to look for: each base64 line of its PEM body, and the Secret's own
/// base64 of the whole PEM as overlapping 48-character windows every 24, so any copied stretch
/// of 72 characters or more contains one.
fn key_needles(stored: &str) -> Option<Vec<String>> {
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD.decode(stored).ok()?;
    let pem = String::from_utf8(pem).ok()?;
    let mut needles: Vec<String> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= MIN_NEEDLE)
        .map(String::from)
        .collect();
    let chars: Vec<char> = stored.chars().collect();
    needles.extend(
        chars
            .windows(MIN_NEEDLE * 2)
            .step_by(MIN_NEEDLE)
            .map(|w| w.iter().collect()),
    );
    Some(needles)
}
