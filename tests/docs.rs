//! The documentation stays true to the code. Every relative link in `README.md` and `docs/`
//! resolves to a file and, with an anchor, to one of its headings; the configuration reference
//! lists every flag `trainjob-operator run --help` prints, with its environment variable and
//! default, and no flag it does not print; the metrics reference lists every metric family
//! `/metrics` exports, and no other; the troubleshooting section has every reason the operator
//! writes. Needs no control plane: it reads files, runs the binary for its help, and encodes a
//! fresh metrics registry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use trainjob_operator::lifecycle::Phase;
use trainjob_operator::metrics::{AdmissionLabels, ErrorLabels, JobLabels, Metrics, ReasonLabels};

const ADMIN_GUIDE: &str = "docs/admin-guide.md";
const USER_GUIDE: &str = "docs/user-guide.md";
const CONFIGURATION: &str = "Configuration reference";
const METRICS: &str = "Metrics reference";
const TROUBLESHOOTING: &str = "Troubleshooting by reason";
const REASONS: &str = "src/reasons.rs";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `path` relative to the repository, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// `README.md` and every `docs/**/*.md`, sorted so that failures read in a stable order.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut files);
    files.sort();
    files
}

/// The lines outside fenced code blocks, numbered from 1: a `#` or `[x](y)` in a code sample is
/// neither a heading nor a link.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => lines.push((i + 1, line)),
            _ => {}
        }
    }
    lines
}

/// A heading's level and text, if `line` is an ATX heading.
fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.chars().take_while(|&c| c == '#').count();
    let rest = &line[level..];
    ((1..=6).contains(&level) && (rest.is_empty() || rest.starts_with(' ')))
        .then(|| (level, rest.trim().trim_end_matches('#').trim()))
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces turned into `-`.
fn slug(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of a Markdown file; a repeated heading gets `-1`, `-2`, ... as on GitHub.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose(text) {
        if let Some((_, title)) = heading(line) {
            let base = slug(title);
            let n = seen.entry(base.clone()).or_default();
            out.insert(if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            });
            *n += 1;
        }
    }
    out
}

/// `line` without its inline code spans, whose text is never a link. A span opens with a run of
/// backticks and closes with the next run of the same length; an unmatched run is literal.
fn without_code_spans(line: &str) -> String {
    fn run_at(s: &str, i: usize) -> usize {
        s[i..].bytes().take_while(|&b| b == b'`').count()
    }
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = run_at(rest, start);
        let after = &rest[start + ticks..];
        let mut close = None;
        let mut i = 0;
        while let Some(j) = after[i..].find('`') {
            let n = run_at(after, i + j);
            if n == ticks {
                close = Some(i + j);
                break;
            }
            i += j + n;
        }
        match close {
            Some(end) => rest = &after[end + ticks..],
            None => {
                out.push_str(&rest[start..start + ticks]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of the inline links and images on `line` (`[x](target)`, `![x](target "title")`).
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let end = after.find([')', ' ']).unwrap_or(after.len());
        targets.push(after[..end].trim_matches(['<', '>']).to_string());
        rest = &after[end..];
    }
    targets
}

#[test]
fn relative_links_and_anchors_resolve() {
    let files = markdown_files();
    assert!(
        files.iter().any(|f| f.ends_with("docs/README.md")),
        "docs/README.md is missing: docs/ needs its index"
    );
    let mut broken = Vec::new();
    for file in &files {
        let text = read(file);
        for (number, line) in prose(&text) {
            for target in link_targets(line) {
                if ["http://", "https://", "mailto:"]
                    .iter()
                    .any(|s| target.starts_with(s))
                {
                    continue;
                }
                let (path, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
                let resolved = match path {
                    "" => file.clone(),
                    _ => file.parent().expect("a file has a directory").join(path),
                };
                let at = format!("{}:{number}: link ({target})", shown(file));
                if !resolved.exists() {
                    broken.push(format!("{at}: {} does not exist", shown(&resolved)));
                    continue;
                }
                if anchor.is_empty() {
                    continue;
                }
                if resolved.extension().is_none_or(|e| e != "md") {
                    broken.push(format!(
                        "{at}: #{anchor} points into {}, which is not Markdown",
                        shown(&resolved)
                    ));
                } else if !anchors(&read(&resolved)).contains(anchor) {
                    broken.push(format!(
                        "{at}: {} has no heading with anchor #{anchor}",
                        shown(&resolved)
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The prose lines of the section titled `title` in `file` (its subsections included), up to the
/// next heading of the same or a higher level.
fn section(file: &str, title: &str) -> Vec<(usize, String)> {
    let text = read(&root().join(file));
    let mut level = None;
    let mut lines = Vec::new();
    for (number, line) in prose(&text) {
        match (level, heading(line)) {
            (None, Some((l, t))) if t == title => level = Some(l),
            (Some(open), Some((l, _))) if l <= open => break,
            (Some(_), _) => lines.push((number, line.to_string())),
            _ => {}
        }
    }
    assert!(level.is_some(), "{file} has no section \"{title}\"");
    lines
}

/// The cells of a table row, trimmed; `None` for other lines and for the separator row.
fn cells(line: &str) -> Option<Vec<String>> {
    let row = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    let cells: Vec<String> = row.split('|').map(|c| c.trim().to_string()).collect();
    (!cells.iter().all(|c| c.chars().all(|ch| matches!(ch, '-' | ':')))).then_some(cells)
}

/// The texts in backticks in `cell`.
fn code(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The rows of the tables in a section, keyed by each name in backticks in their first cell.
fn rows(file: &str, title: &str) -> BTreeMap<String, Vec<String>> {
    let mut rows = BTreeMap::new();
    for (_, line) in section(file, title) {
        if let Some(cells) = cells(&line) {
            for name in code(&cells[0]) {
                rows.insert(name, cells.clone());
            }
        }
    }
    rows
}

/// What `trainjob-operator run --help` says of one flag.
#[derive(Default)]
struct Flag {
    /// The environment variable clap reads it from.
    env: Option<String>,
    /// Its default value, if it has one.
    default: Option<String>,
}

/// The text of a help line's `[key: value]` note, such as `[env: NAME=]` or `[default: 15s]`.
fn note(line: &str, key: &str) -> Option<String> {
    let (_, rest) = line.split_once(&format!("[{key}: "))?;
    Some(rest[..rest.find(']')?].to_string())
}

/// Every long flag of `trainjob-operator run`, with its environment variable and default.
fn run_flags() -> BTreeMap<String, Flag> {
    let binary = env!("CARGO_BIN_EXE_trainjob-operator");
    let out = Command::new(binary)
        .args(["run", "--help"])
        .output()
        .unwrap_or_else(|e| panic!("running {binary} run --help: {e}"));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{binary} run --help failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        // An option line is `--name ...` or `-x, --name ...`; its description is indented further
        // and never starts with a dash.
        let long = trimmed
            .strip_prefix("--")
            .or_else(|| trimmed.strip_prefix('-')?.split_once(", --").map(|(_, l)| l));
        if let Some(long) = long {
            let name: String = long
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            current = (!matches!(name.as_str(), "help" | "version")).then(|| format!("--{name}"));
            if let Some(flag) = &current {
                flags.insert(flag.clone(), Flag::default());
            }
        }
        if let Some(flag) = current.as_ref().and_then(|f| flags.get_mut(f)) {
            // `[env: NAME=]`, or `[env: NAME=value]` when the variable is set.
            let env = note(line, "env").and_then(|n| n.split('=').next().map(str::to_string));
            flag.env = flag.env.take().or(env);
            flag.default = flag.default.take().or_else(|| note(line, "default"));
        }
    }
    assert!(
        flags.contains_key("--http-addr"),
        "found no flags in `trainjob-operator run --help`:\n{help}"
    );
    flags
}

#[test]
fn configuration_reference_has_every_flag() {
    let flags = run_flags();
    let rows = rows(ADMIN_GUIDE, CONFIGURATION);
    let at = format!("{ADMIN_GUIDE}, section \"{CONFIGURATION}\"");
    let mut wrong = Vec::new();
    for (name, flag) in &flags {
        let Some(row) = rows.get(name) else {
            wrong.push(format!(
                "{at}: no row for `{name}` (printed by `trainjob-operator run --help`)"
            ));
            continue;
        };
        if let Some(env) = &flag.env
            && !row.get(1).is_some_and(|c| code(c).contains(env))
        {
            wrong.push(format!(
                "{at}: the row for `{name}` does not give its environment variable `{env}` in its second column"
            ));
        }
        if let Some(default) = &flag.default
            && !row.get(2).is_some_and(|c| c.contains(default.as_str()))
        {
            wrong.push(format!(
                "{at}: the row for `{name}` does not give its default `{default}` in its third column"
            ));
        }
    }
    for flag in rows
        .keys()
        .filter(|f| f.starts_with("--") && !flags.contains_key(*f))
    {
        wrong.push(format!(
            "{at}: lists `{flag}`, which `trainjob-operator run --help` does not print"
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every metric family the operator exports, by the name Prometheus stores its samples under
/// (a counter's `_total`, an info metric's `_info`), with its `# TYPE` line.
fn exported_metrics() -> BTreeMap<String, String> {
    let m = Metrics::new();
    // A labelled family prints nothing, not even its `# TYPE` line, until it holds a sample.
    let job = JobLabels {
        namespace: "ns".into(),
        runtime: "mpi-openmpi".into(),
    };
    m.jobs_created.get_or_create(&job).inc();
    m.jobs_completed.get_or_create(&job).inc();
    let reason = |reason: &str| ReasonLabels {
        namespace: "ns".into(),
        runtime: "mpi-openmpi".into(),
        reason: reason.into(),
    };
    m.jobs_failed.get_or_create(&reason("FailedJobs")).inc();
    m.jobs_stalled.get_or_create(&reason("ImagePullBackOff")).inc();
    m.phase_changed(None, Some(Phase::Running));
    m.reconcile_errors
        .get_or_create(&ErrorLabels {
            error: "read_kube".into(),
        })
        .inc();
    m.admission_reviews
        .get_or_create(&AdmissionLabels {
            kind: "TrainJob".into(),
            operation: "CREATE".into(),
            allowed: "true".into(),
        })
        .inc();
    m.progress_reports
        .get_or_create(&trainjob_operator::metrics::ResultLabels {
            result: "accepted".into(),
        })
        .inc();
    let text = m.encode();
    let families: BTreeMap<String, String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            let stored = match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_string(),
            };
            Some((stored, format!("# TYPE {rest}")))
        })
        .collect();
    assert!(
        !families.is_empty(),
        "no `# TYPE` line in the exposition:\n{text}"
    );
    families
}

#[test]
fn metrics_reference_has_every_metric() {
    let exported = exported_metrics();
    let listed: BTreeSet<String> = rows(ADMIN_GUIDE, METRICS)
        .into_keys()
        .filter(|name| name.starts_with("trainjob_"))
        .collect();
    let at = format!("{ADMIN_GUIDE}, section \"{METRICS}\"");
    let mut wrong = Vec::new();
    for (name, type_line) in &exported {
        if !listed.contains(name) {
            wrong.push(format!(
                "{at}: no row for `{name}` (exported on /metrics: `{type_line}`)"
            ));
        }
    }
    for name in listed.iter().filter(|n| !exported.contains_key(*n)) {
        wrong.push(format!("{at}: lists `{name}`, which /metrics does not export"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every condition reason and Event reason in `src/reasons.rs`, as (path of the constant, value).
/// The `condition` module holds condition types, not reasons, so it is left out.
fn reasons() -> Vec<(String, String)> {
    let text = read(&root().join(REASONS));
    let mut module: Option<String> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("pub mod ").and_then(|l| l.strip_suffix(" {")) {
            module = Some(name.to_string());
        } else if line == "}" {
            module = None;
        }
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((name, value)) = rest.split_once(": &str = \"") else {
            panic!(
                "{REASONS}: cannot read `{line}`; keep each reason on one line as `pub const NAME: &str = \"Value\";`"
            );
        };
        let value = value.trim_end_matches("\";");
        match module.as_deref() {
            Some("condition") => {}
            Some(m) => out.push((format!("reasons::{m}::{name}"), value.to_string())),
            None => out.push((format!("reasons::{name}"), value.to_string())),
        }
    }
    assert!(
        out.iter().any(|(_, v)| v == "FailedJobs"),
        "found no reasons in {REASONS}"
    );
    out
}

#[test]
fn troubleshooting_has_every_reason() {
    let headings: BTreeSet<String> = section(USER_GUIDE, TROUBLESHOOTING)
        .iter()
        .filter_map(|(_, line)| heading(line).map(|(_, title)| title.replace('`', "")))
        .collect();
    let missing: Vec<String> = reasons()
        .into_iter()
        .filter(|(_, value)| !headings.contains(value))
        .map(|(constant, value)| {
            format!(
                "{USER_GUIDE}, section \"{TROUBLESHOOTING}\": no heading for reason `{value}` ({constant} in {REASONS})"
            )
        })
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn anchors_follow_github() {
    assert_eq!(
        slug("Status, conditions and Events"),
        "status-conditions-and-events"
    );
    assert_eq!(
        slug("Two tiers: kwok for scale and lifecycle, a real node for MPI truth"),
        "two-tiers-kwok-for-scale-and-lifecycle-a-real-node-for-mpi-truth"
    );
    assert_eq!(slug("`--fips` and snake_case"), "--fips-and-snake_case");
    let doc = "# A\n## B\n```\n# not a heading\n```\n## B\n## B\n";
    let want: BTreeSet<String> = ["a", "b", "b-1", "b-2"].map(String::from).into();
    assert_eq!(anchors(doc), want);
    assert_eq!(
        link_targets("see [a](x.md#y), `[b](not-a-link)` and ![c](img.png \"t\") ``[d](e)``"),
        ["x.md#y", "img.png"]
    );
}
