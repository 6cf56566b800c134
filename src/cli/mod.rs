//! What `kubectl trainjob` prints, built from job views (`view`). Pure: the plugin binary
//! (`src/bin/kubectl-trainjob.rs`) reads the cluster as the user and hands the results here, so
//! every table and page is tested without a server, against fixed times.

mod logs;
mod table;
#[cfg(test)]
mod tests;

use std::fmt::Write;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::view::{JobView, Progress};
pub use logs::{Printed, in_time_order, log_line, log_prefix, merge_logs};
pub use table::Table;

/// How long ago `then` was, as kubectl prints ages (`42s`, `5m10s`, `3h`, `2d4h`, `90d`).
pub fn age(then: Option<&Time>, now: Timestamp) -> String {
    let Some(then) = then else {
        return "<unknown>".into();
    };
    let s = now.as_second().saturating_sub(then.0.as_second()).max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 && s % 60 != 0 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 && m % 60 != 0 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 && h % 24 != 0 => format!("{d}d{}h", h % 24),
        _ if d < 730 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

/// The phase as a person reads it: `Running`, `Failed`, ...
fn phase(view: &JobView) -> String {
    format!("{:?}", view.phase)
}

/// `40%`, or `-` when the training reports nothing.
fn progress(p: Option<&Progress>) -> String {
    p.and_then(|p| p.percent)
        .map_or_else(|| "-".into(), |v| format!("{v}%"))
}

/// Why the job stands where it does, in one word: the diagnosis, else the newest true condition.
fn reason(view: &JobView) -> String {
    view.diagnosis
        .as_ref()
        .map(|d| d.reason.clone())
        .or_else(|| {
            view.conditions
                .iter()
                .filter(|c| c.status == "True")
                .max_by(|a, b| a.since.0.cmp(&b.since.0))
                .map(|c| c.reason.clone())
        })
        .unwrap_or_default()
}

/// What `list` shows.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListOptions {
    /// A NAMESPACE column first (`-A`).
    pub namespaces: bool,
    /// The runtime and the time left too (`-o wide`).
    pub wide: bool,
}

/// The `list` table of `jobs` (with their creation times), as of `now`.
pub fn list(jobs: &[(JobView, Option<Time>)], options: ListOptions, now: Timestamp) -> String {
    let mut head = vec!["NAME", "PHASE", "PROGRESS", "NODES", "RESTARTS", "AGE", "REASON"];
    if options.namespaces {
        head.insert(0, "NAMESPACE");
    }
    if options.wide {
        head.extend(["RUNTIME", "SECONDS-LEFT"]);
    }
    let mut table = Table::new(&head);
    for (view, created) in jobs {
        let mut row = vec![
            view.name.clone(),
            phase(view),
            progress(view.progress.as_ref()),
            format!("{}/{}", view.nodes.ready, view.nodes.wanted),
            view.restarts.to_string(),
            age(created.as_ref(), now),
            reason(view),
        ];
        if options.namespaces {
            row.insert(0, view.namespace.clone());
        }
        if options.wide {
            row.push(view.runtime.clone());
            row.push(
                view.progress
                    .as_ref()
                    .and_then(|p| p.remaining_seconds)
                    .map_or_else(|| "-".into(), |s| s.to_string()),
            );
        }
        table.row(row);
    }
    table.render()
}

/// `list`'s table with each row's phase in colour (green Complete, red Failed, yellow
/// Restarting), for a terminal. The codes go around the word, inside its padding, so the columns
/// stay aligned. Kubernetes names are ASCII, so the phase sits at the header's byte offset; a
/// row where it does not is left as it is.
pub fn paint_phases(table: &str) -> String {
    let mut lines = table.lines();
    let Some(head) = lines.next() else {
        return String::new();
    };
    let Some(at) = head.find("PHASE") else {
        return table.to_string();
    };
    let mut out = format!("{head}\n");
    for line in lines {
        let (Some(before), Some(rest)) = (line.get(..at), line.get(at..)) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let word = rest.split(' ').next().unwrap_or_default();
        let colour = match word {
            "Complete" => Some("32"),
            "Failed" => Some("31"),
            "Restarting" => Some("33"),
            _ => None,
        };
        match colour.filter(|_| before.is_ascii()) {
            Some(c) => out.push_str(&format!("{before}\x1b[{c}m{word}\x1b[0m{}", &rest[word.len()..])),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The `describe` page of one job, as of `now`.
pub fn describe(view: &JobView, now: Timestamp) -> String {
    let mut out = String::new();
    let field = |out: &mut String, name: &str, value: &str| {
        let _ = writeln!(out, "{:<12}{value}", format!("{name}:"));
    };
    field(&mut out, "Name", &view.name);
    field(&mut out, "Namespace", &view.namespace);
    field(&mut out, "Runtime", &view.runtime);
    field(&mut out, "Phase", &phase(view));
    field(
        &mut out,
        "Nodes",
        &format!("{}/{} ready", view.nodes.ready, view.nodes.wanted),
    );
    field(&mut out, "Restarts", &view.restarts.to_string());
    if let Some(p) = &view.progress {
        let mut text = progress(Some(p));
        if let Some(left) = p.remaining_seconds {
            let _ = write!(text, ", {left}s left");
        }
        for (name, value) in &p.metrics {
            let _ = write!(text, ", {name}={value}");
        }
        if let Some(at) = &p.updated {
            let _ = write!(text, " (reported {} ago)", age(Some(at), now));
        }
        field(&mut out, "Progress", &text);
    }
    if let Some(d) = &view.diagnosis {
        let what = if d.failed { "Failed" } else { "Waiting" };
        let _ = writeln!(out, "\n{what} ({}):\n  {}", d.reason, d.message);
    }
    section(
        &mut out,
        "Conditions",
        &view.conditions,
        &["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
        |c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                age(Some(&c.since), now),
                c.message.clone(),
            ]
        },
    );
    section(
        &mut out,
        "Pods",
        &view.pods,
        &[
            "NAME", "ROLE", "INDEX", "ATTEMPT", "STATE", "READY", "RESTARTS", "NODE", "REASON",
        ],
        |p| {
            let opt = |v: Option<i32>| v.map_or_else(|| "-".into(), |v| v.to_string());
            vec![
                p.name.clone(),
                p.role.clone(),
                opt(p.index),
                opt(p.attempt),
                p.state.clone(),
                if p.ready { "yes" } else { "no" }.into(),
                p.restarts.to_string(),
                p.node.clone().unwrap_or_else(|| "-".into()),
                p.reason.clone().unwrap_or_default(),
            ]
        },
    );
    section(
        &mut out,
        "Timeline",
        &view.timeline,
        &["AGE", "MILESTONE", "DETAIL"],
        |m| {
            vec![
                age(Some(&m.at), now),
                format!("{:?}", m.what),
                m.detail.clone().unwrap_or_default(),
            ]
        },
    );
    section(
        &mut out,
        "Events",
        &view.events,
        &["TYPE", "REASON", "AGE", "COUNT", "MESSAGE"],
        |e| {
            vec![
                e.type_.clone(),
                e.reason.clone(),
                age(e.at.as_ref(), now),
                e.count.to_string(),
                e.message.clone(),
            ]
        },
    );
    out
}

/// A titled, indented table, or `<title>: <none>`.
fn section<T>(out: &mut String, title: &str, items: &[T], head: &[&str], row: impl Fn(&T) -> Vec<String>) {
    if items.is_empty() {
        let _ = writeln!(out, "\n{title}: <none>");
        return;
    }
    let mut table = Table::new(head);
    for item in items {
        table.row(row(item));
    }
    let _ = writeln!(out, "\n{title}:");
    for line in table.render().lines() {
        let _ = writeln!(out, "  {line}");
    }
}
