//! Merged logs: every pod's lines (read with the kubelet's timestamps) in one stream, in time
//! order, each prefixed with where it comes from.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::names::{COMPLETION_INDEX_LABEL, JOB_ROLE_LABEL};

/// `[launcher-0]`, `[node-3]`: the pod's role and index, as its labels say.
pub fn log_prefix(pod: &Pod) -> String {
    let labels = pod.labels();
    let role = labels
        .get(JOB_ROLE_LABEL)
        .cloned()
        .unwrap_or_else(|| pod.name_any());
    match labels.get(COMPLETION_INDEX_LABEL) {
        Some(index) => format!("[{role}-{index}]"),
        None => format!("[{role}]"),
    }
}

/// The lines of every `(prefix, log)` (each line starting with the kubelet's RFC 3339 time), in
/// time order; lines of the same instant keep their pod's order. With `timestamps`, each line
/// keeps its time in front.
pub fn merge_logs(logs: &[(String, String)], timestamps: bool) -> String {
    let mut lines: Vec<(&str, usize, &str, &str)> = Vec::new();
    for (pod, (prefix, text)) in logs.iter().enumerate() {
        for line in text.lines() {
            let (at, rest) = line.split_once(' ').unwrap_or((line, ""));
            lines.push((at, pod, prefix, rest));
        }
    }
    // RFC 3339 in UTC with the kubelet's fixed nine digits sorts as text.
    lines.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut out = String::new();
    for (at, _, prefix, rest) in lines {
        if timestamps {
            out.push_str(at);
            out.push(' ');
        }
        out.push_str(prefix);
        out.push(' ');
        out.push_str(rest);
        out.push('\n');
    }
    out
}
