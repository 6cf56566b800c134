//! Merged logs: every pod's lines (read with the kubelet's timestamps) in one stream, in time
//! order, each prefixed with where it comes from; and, when following, which streamed lines are
//! new.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::names::{COMPLETION_INDEX_LABEL, JOB_ROLE_LABEL, RESTART_ATTEMPT_LABEL};

/// `[launcher-0]`, `[node-3]`: the pod's role and index, as its labels say; after a gang
/// restart also the attempt (`[node-3 attempt 1]`), so lines of the new gang stand apart; with
/// `host`, the node it runs on (`[node-3 on gpu-7]`).
pub fn log_prefix(pod: &Pod, host: bool) -> String {
    let labels = pod.labels();
    let role = labels
        .get(JOB_ROLE_LABEL)
        .cloned()
        .unwrap_or_else(|| pod.name_any());
    let index = labels
        .get(COMPLETION_INDEX_LABEL)
        .map(|i| format!("-{i}"))
        .unwrap_or_default();
    let attempt = labels
        .get(RESTART_ATTEMPT_LABEL)
        .filter(|a| a.as_str() != "0")
        .map(|a| format!(" attempt {a}"))
        .unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|_| host)
        .map(|n| format!(" on {n}"))
        .unwrap_or_default();
    format!("[{role}{index}{attempt}{node}]")
}

/// A log line read with `timestamps=true`: the kubelet's RFC 3339 time, then the text.
fn split(line: &str) -> (&str, &str) {
    line.split_once(' ').unwrap_or((line, ""))
}

/// One output line: the prefix and the text, with the time in front when asked.
pub fn log_line(prefix: &str, line: &str, timestamps: bool) -> String {
    let (at, rest) = split(line);
    if timestamps {
        format!("{at} {prefix} {rest}")
    } else {
        format!("{prefix} {rest}")
    }
}

/// The lines of every `(prefix, log)` (each line starting with the kubelet's RFC 3339 time) as
/// `(prefix, line)`, in time order; lines of the same instant keep their pod's order.
pub fn in_time_order(logs: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut lines: Vec<(&str, &str)> = logs
        .iter()
        .flat_map(|(prefix, text)| text.lines().map(move |l| (prefix.as_str(), l)))
        .collect();
    // RFC 3339 in UTC with the kubelet's fixed nine digits sorts as text; the sort is stable.
    lines.sort_by(|a, b| split(a.1).0.cmp(split(b.1).0));
    lines
}

/// The lines of every `(prefix, log)` merged [`in_time_order`], each rendered by [`log_line`].
pub fn merge_logs(logs: &[(String, String)], timestamps: bool) -> String {
    in_time_order(logs)
        .into_iter()
        .map(|(prefix, line)| log_line(prefix, line, timestamps) + "\n")
        .collect()
}

/// The newest line printed per pod (by uid), so that a stream opened again from a second's
/// start (the API's `sinceTime` has whole seconds), or a second stream of the same container,
/// prints nothing twice.
#[derive(Debug, Default)]
pub struct Printed {
    newest: HashMap<String, String>,
}

impl Printed {
    /// Whether `line` of pod `uid` is newer than every line printed for it; if so, it is now
    /// the newest.
    pub fn fresh(&mut self, uid: &str, line: &str) -> bool {
        let at = split(line).0;
        match self.newest.get(uid) {
            Some(newest) if at <= newest.as_str() => false,
            _ => {
                self.newest.insert(uid.to_string(), at.to_string());
                true
            }
        }
    }

    /// The time of the newest line printed for pod `uid`.
    pub fn newest(&self, uid: &str) -> Option<&str> {
        self.newest.get(uid).map(String::as_str)
    }
}
