//! Renders a [`Report`] into `docs/development/benchmarks.md` and the PNG charts it embeds.
//!
//! Every operator figure sits next to the floor's (a plain client creating the same objects with no
//! operator) and their ratio, so the document reads as "what the operator adds" rather than as
//! absolute numbers that mostly describe the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::{self, Display, Formatter};
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{AsRangedCoord, Ranged};
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::model::{Baseline, MemorySample, Percentiles, Report, RoundRatios, Run, Scenario, Watched};

/// Scenario kinds in the order their sections appear; kinds not listed follow, in run order.
const KINDS: [(&str, &str); 6] = [
    ("lone", "Lone job"),
    ("burst", "Bursts"),
    ("tenants", "Tenants"),
    ("width", "Width"),
    ("steady", "Steady state"),
    ("concurrency", "Reconcile concurrency"),
];

/// Renders `docs/development/benchmarks.md`. `charts` are (title, path relative to the document) pairs, as
/// [`charts`] returns them, embedded in that order.
pub fn markdown(report: &Report, charts: &[(String, String)]) -> String {
    Markdown { report, charts }.to_string()
}

/// Draws the charts into `dir` (created if missing) and returns (title, file name) pairs for
/// [`markdown`]. A chart whose data is empty is skipped, not an error.
///
/// Text is drawn with DejaVu Sans, read once from `/usr/share/fonts/truetype/dejavu/` (Debian
/// package `fonts-dejavu-core`); without it this fails before writing anything.
pub fn charts(report: &Report, dir: &Path) -> Result<Vec<(String, String)>, Box<dyn Error>> {
    std::fs::create_dir_all(dir)?;
    let mut drawn = Vec::new();
    let all: [(&str, &str, ChartFn); 4] = [
        (
            "Create → all workers created, by burst size",
            "bench-burst.png",
            burst_chart,
        ),
        (
            "Worker pods created, by job width",
            "bench-width.png",
            width_chart,
        ),
        (
            "Operator memory, by TrainJobs in its cache",
            "bench-memory.png",
            memory_chart,
        ),
        (
            "Before and after: the operator's time as a multiple of the floor's",
            "bench-before-after.png",
            before_after_chart,
        ),
    ];
    for (title, file, draw) in all {
        if draw(report, title, &dir.join(file))? {
            drawn.push((title.to_string(), file.to_string()));
        }
    }
    Ok(drawn)
}

// ------------------------------------------------------------------------------------------------
// Markdown

struct Markdown<'a> {
    report: &'a Report,
    charts: &'a [(String, String)],
}

impl Display for Markdown<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let r = self.report;
        writeln!(f, "# Benchmarks\n")?;
        writeln!(
            f,
            "Every scenario runs twice on the same local control plane: once by a plain client, \
             *the floor*, with no operator, and once through the operator. The floor is the fastest \
             plain client that does the same API work: it creates the same objects per job, each \
             step's at once (the Secret, hostfile, Service, NetworkPolicy and runtime snapshot; then \
             every worker; then, once its watch shows them Ready, the launcher; then, once the \
             launcher succeeded, one collection delete of the workers, which would run sshd for \
             ever), with 32 requests in flight across all jobs, and a burst's TrainJobs are \
             created with 32 in flight too. Like the operator it decides from a watch of its own \
             (since 2026-12-06; before, from the bench's measuring watch, which spared it one \
             watcher's share of the API server's work). The plain bursts run in three rounds \
             of floor and operator (since 2026-12-06), and are shown by the round of the median \
             ratio: one round's ratio moves by more than a day's changes. \
             Every figure is also given as a ratio to the floor (operator ÷ floor, `×`), so what \
             the tables show is the cost the operator adds over the API server itself, not how \
             fast this machine is. Latencies run from each job's create (for the floor, the moment \
             it started on the job) to the moment the bench's own watch saw the object, timed with \
             millisecond clocks; writes are counted from the API server's audit log.\n"
        )?;
        writeln!(
            f,
            "Latency cells read *p50 / p99* in milliseconds over the jobs of the scenario; `–` \
             means no data (or a zero floor for a ratio).\n"
        )?;
        if !r.date.is_empty() {
            writeln!(f, "Run on {}.\n", r.date)?;
        }

        let pairs = |m: &BTreeMap<String, String>| -> Vec<Vec<String>> {
            m.iter().map(|(k, v)| vec![cell(k), cell(v)]).collect()
        };
        if !r.machine.is_empty() {
            writeln!(f, "## Machine\n")?;
            text_table(f, &["Machine", ""], &pairs(&r.machine))?;
        }
        if !r.versions.is_empty() {
            writeln!(f, "## Versions\n")?;
            text_table(f, &["Component", "Version"], &pairs(&r.versions))?;
        }
        writeln!(f, "## Bed and operator settings\n")?;
        let mut settings = vec![
            vec!["kwok nodes".to_string(), r.nodes.to_string()],
            vec!["pods per node".to_string(), r.pods_per_node.to_string()],
        ];
        settings.extend(
            r.operator_settings
                .iter()
                .map(|(k, v)| vec![format!("`{}`", cell(k)), cell(v)]),
        );
        text_table(f, &["Setting", "Value"], &settings)?;

        for (kind, heading) in kinds(r) {
            let scenarios: Vec<&Scenario> = r.scenarios.iter().filter(|s| s.kind == kind).collect();
            writeln!(f, "## {heading}\n")?;
            scenario_tables(f, &scenarios)?;
        }

        watched(f, &r.scenarios)?;

        requests_table(
            f,
            &r.scenarios,
            (
                "Writes per job by verb and resource",
                "The operator's API writes from the audit log, divided by the scenario's jobs.",
                "Write",
            ),
            |run| &run.writes,
        )?;
        requests_table(
            f,
            &r.scenarios,
            (
                "Reads per job by verb and resource",
                "The operator's reads in the scenario's namespaces (its cluster-wide watches are \
                 not any namespace's), divided by the scenario's jobs.",
                "Read",
            ),
            |run| &run.reads,
        )?;
        if let Some(before) = &r.before {
            before_after(f, before, r)?;
        }

        if !self.charts.is_empty() {
            writeln!(f, "## Charts\n")?;
            for (title, file) in self.charts {
                writeln!(f, "![{title}]({file})\n")?;
            }
        }

        if let Some(a) = &r.admission {
            writeln!(f, "## Admission\n")?;
            writeln!(
                f,
                "{} TrainJob creates, one at a time (suspended, so nothing else runs): without the webhook (the floor), then with the shipped webhook configurations calling the operator.\n",
                a.creates
            )?;
            let row = |label: &str, p: &Percentiles| {
                vec![
                    cell(label),
                    format!("{:.1}", p.p50_ms),
                    format!("{:.1}", p.p99_ms),
                ]
            };
            let rows = vec![
                row("without the webhook", &a.floor),
                row("with the webhook", &a.webhook),
            ];
            table(f, &["Create", "p50 (ms)", "p99 (ms)"], &rows)?;
        }

        if let Some(k) = &r.kept {
            writeln!(f, "## Many TrainJobs kept\n")?;
            writeln!(
                f,
                "The operator started over {} TrainJobs already in the cluster ({} finished with \
                 their objects, the rest suspended), until it had reconciled every one and then done nothing for 2 s.\n",
                k.jobs, k.finished
            )?;
            let rows = vec![
                vec!["reconciled all after (s)".into(), format!("{:.1}", k.settle_s)],
                vec!["operator RSS, settled (MiB)".into(), format!("{:.1}", k.rss_mib)],
                vec!["operator peak RSS (MiB)".into(), format!("{:.1}", k.peak_rss_mib)],
            ];
            table(f, &["Measure", "Value"], &rows)?;
        }

        if !r.micro.is_empty() {
            writeln!(f, "## Micro benchmarks\n")?;
            writeln!(f, "The pure core, no API server: time per call.\n")?;
            let rows: Vec<Vec<String>> = r
                .micro
                .iter()
                .map(|(k, us)| vec![cell(k), format!("{us:.3}")])
                .collect();
            table(f, &["Operation", "µs per op"], &rows)?;
        }
        Ok(())
    }
}

/// Kinds present in the report with their headings: the known ones first, then any others.
fn kinds(r: &Report) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = KINDS
        .iter()
        .filter(|(k, _)| r.scenarios.iter().any(|s| s.kind == *k))
        .map(|(k, h)| (k.to_string(), h.to_string()))
        .collect();
    for s in &r.scenarios {
        if !out.iter().any(|(k, _)| *k == s.kind) {
            out.push((s.kind.clone(), format!("Scenario kind `{}`", s.kind)));
        }
    }
    out
}

/// The section on scenarios with people watching, when there are any.
fn watched(f: &mut Formatter<'_>, scenarios: &[Scenario]) -> fmt::Result {
    let watched: Vec<(&Scenario, &Watched)> = scenarios
        .iter()
        .filter_map(|s| s.operator.watched.as_ref().map(|w| (s, w)))
        .collect();
    if watched.is_empty() {
        return Ok(());
    }
    writeln!(
        f,
        "## Watched\n\nA burst as on a cluster in use: once a job's launcher pod exists, its \
         training code (played by the bench) reports its progress to the status server, one \
         report after another over HTTPS with a token bound to that pod (as the kubelet mounts \
         it), which the operator checks with a TokenReview and writes into \
         `status.trainerStatus`; and sessions of the dashboard's page (its release binary, with a \
         tenant's token) are open on the namespace throughout. Its rows in the tables above set \
         it against the floor, which has neither; the burst of the same size without them is \
         the cost of watching. kwok's launchers succeed as soon as they run, so most reports \
         reach a job that is already Complete: the same work, in another order than a real \
         job's.\n"
    )?;
    let rows: Vec<Vec<String>> = watched
        .iter()
        .map(|(s, w)| {
            let shown = &w.complete_shown_after;
            vec![
                cell(&s.name),
                format!("{} / {}", w.accepted, w.reports),
                p50_p99(&w.report_answer),
                format!(
                    "{} / {} / {}",
                    ms(shown.p50_ms),
                    ms(shown.p99_ms),
                    ms(shown.max_ms)
                ),
                w.complete_not_shown.to_string(),
                format!("{:.1}", w.views_per_job_and_session),
                format!("{:.1}", w.dashboard_peak_rss_mib),
                format!("{:.1}", w.dashboard_cpu_s),
            ]
        })
        .collect();
    table(
        f,
        &[
            "Scenario",
            "Reports accepted / sent",
            "Report answered (ms)",
            "Complete on every page after the watch saw it: p50 / p99 / max (ms)",
            "Complete never shown (job × page)",
            "Views per job and page",
            "Dashboard peak RSS (MiB)",
            "Dashboard CPU (s)",
        ],
        &rows,
    )
}

/// The three tables of one kind: per-job latency, whole-scenario times, and cost.
fn scenario_tables(f: &mut Formatter<'_>, scenarios: &[&Scenario]) -> fmt::Result {
    writeln!(
        f,
        "Per job, from its create; then the operator's own part of a job's end, from its \
         launcher's success to its `Complete`; and the reaction to a ready gang, from the job's \
         last worker Ready to its launcher created:\n"
    )?;
    let latency: Vec<Vec<String>> = scenarios
        .iter()
        .map(|s| {
            let (fl, op) = (&s.floor, &s.operator);
            let mut row = vec![cell(&s.name)];
            for (a, b) in [
                (&fl.workers_created, &op.workers_created),
                (&fl.workers_ready, &op.workers_ready),
                (&fl.launcher_created, &op.launcher_created),
                (&fl.launcher_succeeded, &op.launcher_succeeded),
                (&fl.complete, &op.complete),
            ] {
                row.extend([p50_p99(a), p50_p99(b), ratio_p50_p99(b, a)]);
            }
            row.push(p50_p99(&op.succeeded_to_complete));
            row.extend([p50_p99(&fl.ready_to_launcher), p50_p99(&op.ready_to_launcher)]);
            row
        })
        .collect();
    table(
        f,
        &[
            "Scenario",
            "Workers created: floor",
            "operator",
            "×",
            "Workers Ready: floor",
            "operator",
            "×",
            "Launcher created: floor",
            "operator",
            "×",
            "Launcher Succeeded: floor",
            "operator",
            "×",
            "Complete: floor",
            "operator",
            "×",
            "Succeeded → Complete: operator",
            "Last worker Ready → launcher: floor",
            "operator",
        ],
        &latency,
    )?;

    writeln!(f, "Whole scenario, from its first create, in seconds:\n")?;
    let totals: Vec<Vec<String>> = scenarios
        .iter()
        .map(|s| {
            let (fl, op) = (&s.floor, &s.operator);
            vec![
                cell(&s.name),
                secs(fl.all_workers_created_s),
                secs(op.all_workers_created_s),
                ratio(op.all_workers_created_s, fl.all_workers_created_s),
                secs(fl.all_complete_s),
                secs(op.all_complete_s),
                ratio(op.all_complete_s, fl.all_complete_s),
                format!("{} / {}", fl.incomplete, op.incomplete),
            ]
        })
        .collect();
    table(
        f,
        &[
            "Scenario",
            "All workers created: floor",
            "operator",
            "×",
            "All Complete: floor",
            "operator",
            "×",
            "Incomplete jobs: floor / operator",
        ],
        &totals,
    )?;

    writeln!(f, "Cost:\n")?;
    let cost: Vec<Vec<String>> = scenarios
        .iter()
        .map(|s| {
            let (fl, op) = (&s.floor, &s.operator);
            vec![
                cell(&s.name),
                format!("{:.1}", fl.writes_per_job),
                format!("{:.1}", op.writes_per_job),
                ratio(op.writes_per_job, fl.writes_per_job),
                opt(op.peak_rss_mib, |v| format!("{v:.1}")),
                opt(op.cpu_s, |v| format!("{v:.2}")),
                opt(fl.apiserver_cpu_s, |v| format!("{v:.1}")),
                opt(op.apiserver_cpu_s, |v| format!("{v:.1}")),
                match (op.apiserver_cpu_s, fl.apiserver_cpu_s) {
                    (Some(o), Some(f)) => ratio(o, f),
                    _ => "–".into(),
                },
                opt(fl.watch_events_per_job, |v| format!("{v:.0}")),
                opt(op.watch_events_per_job, |v| format!("{v:.0}")),
                opt(op.reconciles_per_job, |v| format!("{v:.1}")),
                opt(op.reconcile_errors, |v| v.to_string()),
                mean_check(op),
            ]
        })
        .collect();
    table(
        f,
        &[
            "Scenario",
            "Writes per job: floor",
            "operator",
            "×",
            "Operator peak RSS (MiB)",
            "Operator CPU (s)",
            "API server CPU (s): floor",
            "operator",
            "×",
            "Watch events per job: floor",
            "operator",
            "Reconciles per job",
            "Reconcile errors",
            "Workers created mean (ms): watch / operator's metric",
        ],
        &cost,
    )?;

    bed_cpu_table(f, scenarios)?;
    job_floor_table(f, scenarios)?;
    rounds_table(f, scenarios)?;

    let paths: Vec<Vec<String>> = scenarios
        .iter()
        .filter_map(|s| {
            let (fl, op) = (s.floor.path?, s.operator.path?);
            Some(vec![
                cell(&s.name),
                ms(fl.first_write_ms),
                ms(fl.first_pod_ms),
                ms(fl.workers_ms),
                ms(op.first_request_ms),
                ms(op.first_write_ms),
                ms(op.first_pod_ms),
                ms(op.workers_ms),
            ])
        })
        .collect();
    if !paths.is_empty() {
        writeln!(
            f,
            "Where the time goes until the workers exist, by the API server's clock (its audit \
             log), median ms from the TrainJob's create (the floor: from its first request): the \
             first request for one of the job's objects, the first write, the first pod create, \
             the last worker created:\n"
        )?;
        table(
            f,
            &[
                "Scenario",
                "Floor: first write",
                "first pod",
                "all workers",
                "Operator: first request",
                "first write",
                "first pod",
                "all workers",
            ],
            &paths,
        )?;
    }

    let fair: Vec<Vec<String>> = scenarios
        .iter()
        .filter(|s| s.operator.tenants.len() > 1)
        .map(|s| {
            let spread = |run: &Run| {
                let p50: Vec<f64> = run.tenants.iter().map(|p| p.p50_ms).collect();
                let (lo, hi) = (min(&p50), max(&p50));
                [format!("{} – {}", ms(lo), ms(hi)), ratio(hi, lo)]
            };
            let mut row = vec![cell(&s.name), s.operator.tenants.len().to_string()];
            row.extend(spread(&s.floor));
            row.extend(spread(&s.operator));
            row
        })
        .collect();
    if fair.is_empty() {
        return Ok(());
    }
    writeln!(
        f,
        "Fairness: each tenant's (namespace's) p50 of create → all workers created, the fastest \
         and the slowest tenant, and slowest ÷ fastest:\n"
    )?;
    table(
        f,
        &[
            "Scenario",
            "Tenants",
            "Floor p50 (ms)",
            "×",
            "Operator p50 (ms)",
            "×",
        ],
        &fair,
    )
}

/// The scenarios both runs have, by name, each run's pair (before, after).
fn paired<'a>(before: &'a Baseline, after: &'a Report) -> Vec<(&'a Scenario, &'a Scenario)> {
    after
        .scenarios
        .iter()
        .filter_map(|a| Some((before.scenarios.iter().find(|b| b.name == a.name)?, a)))
        .collect()
}

/// The ratios to the floor that say what the operator costs, before and after: each run
/// against its own floor, so the two compare though they ran at different times.
fn before_after(f: &mut Formatter<'_>, before: &Baseline, after: &Report) -> fmt::Result {
    let pairs = paired(before, after);
    if pairs.is_empty() {
        return Ok(());
    }
    writeln!(
        f,
        "## Before and after
"
    )?;
    writeln!(
        f,
        "The same scenarios through an earlier operator, {} (run on {}), each run against its \
         own floor: *before → after*, as ratios to the floor (lower is better) and the \
         operator's own cost.\n",
        before.operator, before.date
    )?;
    let show = |x: Option<f64>, unit: &str| x.map_or("–".to_string(), |x| format!("{x:.1}{unit}"));
    let both =
        |b: &Run, a: &Run, v: fn(&Run) -> Option<f64>| format!("{} → {}", show(v(b), ""), show(v(a), ""));
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|(b, a)| {
            let (bf, bo, af, ao) = (&b.floor, &b.operator, &a.floor, &a.operator);
            let ratio_of = |fl: &Run, op: &Run, v: fn(&Run) -> f64| -> Option<f64> {
                (v(fl) > 0.0).then(|| v(op) / v(fl))
            };
            let pair = |v: fn(&Run) -> f64| -> String {
                let show = |x: Option<f64>| x.map_or("–".to_string(), |x| format!("{x:.2}×"));
                format!("{} → {}", show(ratio_of(bf, bo, v)), show(ratio_of(af, ao, v)))
            };
            vec![
                cell(&a.name),
                pair(|r| r.workers_created.p50_ms),
                pair(|r| r.all_workers_created_s),
                pair(|r| r.all_complete_s),
                pair(|r| r.apiserver_cpu_s.unwrap_or(0.0)),
                both(bo, ao, |r| Some(r.writes_per_job)),
                both(bo, ao, |r| r.peak_rss_mib),
            ]
        })
        .collect();
    table(
        f,
        &[
            "Scenario",
            "Workers created p50 ×",
            "All workers created ×",
            "All Complete ×",
            "API server CPU ×",
            "Writes per job",
            "Operator peak RSS (MiB)",
        ],
        &rows,
    )?;
    if let (Some(b), Some(a)) = (&before.kept, &after.kept) {
        writeln!(
            f,
            "With {} TrainJobs kept, the operator's RSS once settled: {:.1} → {:.1} MiB (peak \
             {:.1} → {:.1} MiB).\n",
            a.jobs, b.rss_mib, a.rss_mib, b.peak_rss_mib, a.peak_rss_mib
        )?;
    }
    Ok(())
}

/// The operator's requests per job by `verb resource` (`requests` picks writes or reads),
/// one column per scenario, with a total row.
fn requests_table(
    f: &mut Formatter<'_>,
    scenarios: &[Scenario],
    (heading, intro, first): (&str, &str, &str),
    requests: fn(&Run) -> &BTreeMap<String, u64>,
) -> fmt::Result {
    let keys: BTreeSet<&String> = scenarios
        .iter()
        .flat_map(|s| requests(&s.operator).keys())
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    writeln!(f, "## {heading}\n")?;
    writeln!(f, "{intro}\n")?;
    let mut header = vec![first.to_string()];
    header.extend(scenarios.iter().map(|s| cell(&s.name)));
    let per_job = |s: &Scenario, n: u64| {
        if s.jobs == 0 {
            "–".to_string()
        } else {
            format!("{:.1}", n as f64 / f64::from(s.jobs))
        }
    };
    let mut rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let mut row = vec![cell(k)];
            row.extend(
                scenarios
                    .iter()
                    .map(|s| per_job(s, requests(&s.operator).get(*k).copied().unwrap_or(0))),
            );
            row
        })
        .collect();
    let mut total = vec!["**all**".to_string()];
    total.extend(
        scenarios
            .iter()
            .map(|s| format!("**{}**", per_job(s, requests(&s.operator).values().sum()))),
    );
    rows.push(total);
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(f, &header, &rows)
}

/// A Markdown table of figures: first column left-aligned (labels), the rest right-aligned so
/// digits line up.
fn table(f: &mut Formatter<'_>, header: &[&str], rows: &[Vec<String>]) -> fmt::Result {
    aligned(f, header, rows, "---:")
}

/// Every round's ratios of the scenarios that ran more than once, in the order they ran.
fn rounds_table(f: &mut Formatter<'_>, scenarios: &[&Scenario]) -> fmt::Result {
    let rows: Vec<Vec<String>> = scenarios
        .iter()
        .filter(|s| !s.rounds.is_empty())
        .map(|s| {
            let each = |ratio: &dyn Fn(&RoundRatios) -> Option<f64>| {
                let shown: Vec<String> = s
                    .rounds
                    .iter()
                    .map(|r| ratio(r).map_or("–".into(), |v| format!("{v:.2}×")))
                    .collect();
                shown.join(", ")
            };
            vec![
                cell(&s.name),
                each(&|r| Some(r.complete)),
                each(&|r| r.complete_to_job_floor),
                each(&|r| Some(r.all_workers)),
                each(&|r| r.apiserver_cpu),
            ]
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        f,
        "Rounds: these scenarios ran several times (each round its floors, then the operator); the tables \
         above show the round whose every-job-Complete ratio is the median, and here is every \
         round's, in the order they ran:\n"
    )?;
    table(
        f,
        &[
            "Scenario",
            "Every job Complete ×",
            "× the floor keeping the TrainJob",
            "Every worker created ×",
            "API server CPU ×",
        ],
        &rows,
    )
}

/// The bursts against the floor that also keeps each TrainJob, next to the plain floor: how
/// much of the operator's distance to the floor is the TrainJob's own API work.
fn job_floor_table(f: &mut Formatter<'_>, scenarios: &[&Scenario]) -> fmt::Result {
    let rows: Vec<Vec<String>> = scenarios
        .iter()
        .filter_map(|s| {
            let (fl, jf, op) = (&s.floor, s.job_floor.as_ref()?, &s.operator);
            let cpu = |r: &Run| opt(r.apiserver_cpu_s, |v| format!("{v:.1}"));
            Some(vec![
                cell(&s.name),
                secs(fl.all_complete_s),
                secs(jf.all_complete_s),
                secs(op.all_complete_s),
                ratio(op.all_complete_s, jf.all_complete_s),
                cpu(fl),
                cpu(jf),
                cpu(op),
                match (op.apiserver_cpu_s, jf.apiserver_cpu_s) {
                    (Some(o), Some(j)) => ratio(o, j),
                    _ => "–".into(),
                },
                format!("{:.1}", jf.writes_per_job),
                format!("{:.1}", op.writes_per_job),
                opt(jf.watch_events_per_job, |v| format!("{v:.0}")),
                opt(op.watch_events_per_job, |v| format!("{v:.0}")),
            ])
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        f,
        "Against a floor that also keeps each TrainJob (a labelled extra, not the targets' \
         floor): the same plain client creates the TrainJob (within its requests in flight), \
         writes its status three times (workers created, launcher created, `Complete`), creates \
         three Events and deletes the Secret, as the Kubeflow API asks of any implementation \
         and the operator does; its job is done at `Complete`:\n"
    )?;
    table(
        f,
        &[
            "Scenario",
            "Every job Complete (s): floor",
            "floor keeping the TrainJob",
            "operator",
            "× the latter",
            "API server CPU (s): floor",
            "floor keeping the TrainJob",
            "operator",
            "× the latter",
            "Writes per job: floor keeping the TrainJob",
            "operator",
            "Watch events per job: floor keeping the TrainJob",
            "operator",
        ],
        &rows,
    )
}

/// Where the CPU of each scenario's shared cores went: each part of the bed, floor → operator
/// run. Only for runs that measured it.
fn bed_cpu_table(f: &mut Formatter<'_>, scenarios: &[&Scenario]) -> fmt::Result {
    let parts: Vec<String> = scenarios
        .iter()
        .flat_map(|s| s.operator.bed_cpu_s.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if parts.is_empty() {
        return Ok(());
    }
    writeln!(
        f,
        "CPU of the bed's other parts (s), floor → operator run: on shared cores, the extra work \
         of one part slows the others:\n"
    )?;
    let rows: Vec<Vec<String>> = scenarios
        .iter()
        .filter(|s| !s.operator.bed_cpu_s.is_empty())
        .map(|s| {
            let mut row = vec![cell(&s.name)];
            row.extend(parts.iter().map(|part| {
                match (s.floor.bed_cpu_s.get(part), s.operator.bed_cpu_s.get(part)) {
                    (Some(fl), Some(op)) => format!("{fl:.1} → {op:.1}"),
                    _ => "–".into(),
                }
            }));
            row
        })
        .collect();
    let header: Vec<&str> = std::iter::once("Scenario")
        .chain(parts.iter().map(String::as_str))
        .collect();
    table(f, &header, &rows)
}

/// A Markdown table of text, all left-aligned.
fn text_table(f: &mut Formatter<'_>, header: &[&str], rows: &[Vec<String>]) -> fmt::Result {
    aligned(f, header, rows, ":---")
}

fn aligned(f: &mut Formatter<'_>, header: &[&str], rows: &[Vec<String>], values: &str) -> fmt::Result {
    writeln!(f, "| {} |", header.join(" | "))?;
    let align: Vec<&str> = (0..header.len())
        .map(|i| if i == 0 { ":---" } else { values })
        .collect();
    writeln!(f, "|{}|", align.join("|"))?;
    for row in rows {
        writeln!(f, "| {} |", row.join(" | "))?;
    }
    writeln!(f)
}

/// Text safe inside a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// `operator / floor` as `1.23×`; `–` when the floor is zero or either side is not a number.
fn ratio(operator: f64, floor: f64) -> String {
    if floor > 0.0 && floor.is_finite() && operator.is_finite() {
        format!("{:.2}×", operator / floor)
    } else {
        "–".to_string()
    }
}

/// Milliseconds: whole above 10 ms, where a tenth is noise; a decimal below.
fn ms(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn secs(v: f64) -> String {
    format!("{v:.2}")
}

fn p50_p99(p: &Percentiles) -> String {
    if p.n == 0 {
        "–".to_string()
    } else {
        format!("{} / {}", ms(p.p50_ms), ms(p.p99_ms))
    }
}

fn ratio_p50_p99(operator: &Percentiles, floor: &Percentiles) -> String {
    if operator.n == 0 || floor.n == 0 {
        "–".to_string()
    } else {
        format!(
            "{} / {}",
            ratio(operator.p50_ms, floor.p50_ms),
            ratio(operator.p99_ms, floor.p99_ms)
        )
    }
}

fn opt<T>(v: Option<T>, show: impl Fn(T) -> String) -> String {
    v.map(show).unwrap_or_else(|| "–".to_string())
}

/// The bench's own mean next to the operator's histogram mean: they should agree, and a gap says
/// one of the two clocks is measuring something else.
fn mean_check(op: &Run) -> String {
    let watch = if op.workers_created.n == 0 {
        "–".to_string()
    } else {
        ms(op.workers_created.mean_ms)
    };
    format!("{watch} / {}", opt(op.operator_pods_created_mean_ms, ms))
}

// ------------------------------------------------------------------------------------------------
// Charts

/// Draws one chart into the file; `Ok(false)` when there was nothing to draw.
type ChartFn = fn(&Report, &str, &Path) -> Result<bool, Box<dyn Error>>;

const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The family plotters asks for by default (axis labels, legends), so one registration covers all.
const FONT: &str = "sans-serif";

const FLOOR: RGBColor = RGBColor(31, 119, 180);
const OPERATOR: RGBColor = RGBColor(214, 39, 40);

/// Registers DejaVu Sans with plotters, once per process: plotters' `ab_glyph` text has no system
/// font lookup, and keeps the font bytes for the process's lifetime.
fn register_font() -> Result<(), Box<dyn Error>> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT_PATH).map_err(|e| {
                format!("chart font {FONT_PATH}: {e} (install the Debian package fonts-dejavu-core)")
            })?;
            plotters::style::register_font(FONT, FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
                .map_err(|_| format!("chart font {FONT_PATH} is not a TrueType font plotters can read"))
        })
        .clone()
        .map_err(Into::into)
}

type Chart<'a, X, Y> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>;

/// One series on a chart.
struct Series<X, Y> {
    label: String,
    points: Vec<(X, Y)>,
    color: RGBColor,
    dashed: bool,
}

fn series<X, Y>(label: &str, color: RGBColor, dashed: bool, points: Vec<(X, Y)>) -> Series<X, Y> {
    Series {
        label: label.to_string(),
        points,
        color,
        dashed,
    }
}

/// Draws lines with markers (or markers alone for a single point) and their legend entries.
fn plot<'a, X, Y>(
    chart: &mut Chart<'a, X, Y>,
    all: Vec<Series<X::ValueType, Y::ValueType>>,
) -> Result<(), Box<dyn Error>>
where
    X: Ranged,
    Y: Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    for s in all.into_iter().filter(|s| !s.points.is_empty()) {
        let style = s.color.stroke_width(2);
        let anno = if s.dashed {
            chart.draw_series(DashedLineSeries::new(s.points.clone(), 8, 5, style))?;
            chart.draw_series(
                s.points
                    .iter()
                    .map(|p| TriangleMarker::new(p.clone(), 5, s.color.filled())),
            )?
        } else {
            chart.draw_series(LineSeries::new(s.points.clone(), style))?;
            chart.draw_series(
                s.points
                    .iter()
                    .map(|p| Circle::new(p.clone(), 4, s.color.filled())),
            )?
        };
        let (color, dashed) = (s.color, s.dashed);
        anno.label(s.label).legend(
            move |(x, y)| -> DynElement<'static, BitMapBackend<'_>, (i32, i32)> {
                let line = vec![(x, y), (x + 24, y)];
                if dashed {
                    DashedPathElement::new(line, 6, 4, color.stroke_width(2)).into_dyn()
                } else {
                    PathElement::new(line, color.stroke_width(2)).into_dyn()
                }
            },
        );
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 15))
        .draw()?;
    Ok(())
}

/// A chart with the house style: title, margins, label areas.
fn chart_on<'a, X: AsRangedCoord, Y: AsRangedCoord>(
    area: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    title: &str,
    x: X,
    y: Y,
) -> Result<Chart<'a, X::CoordDescType, Y::CoordDescType>, Box<dyn Error>> {
    Ok(ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?)
}

/// Log-axis bounds around `[min, max]` (both > 0) that always contain a power of ten, since
/// plotters labels a log axis only at powers of the base.
fn log_bounds(min: f64, max: f64) -> (f64, f64) {
    let (mut lo, hi) = (min / 1.5, max * 1.5);
    if hi.log10().floor() < lo.log10().ceil() {
        lo = 10f64.powf(min.log10().floor());
    }
    (lo, hi)
}

fn tick(v: &f64) -> String {
    if *v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn burst_chart(report: &Report, title: &str, file: &Path) -> Result<bool, Box<dyn Error>> {
    // A watched burst is as large as a plain one: it has its own section, not a point here.
    let bursts: Vec<&Scenario> = report
        .scenarios
        .iter()
        .filter(|s| s.kind == "burst" && s.operator.watched.is_none())
        .collect();
    // A lone job is a burst of one, but only comparable when its jobs are as wide as the bursts'.
    let lone = report
        .scenarios
        .iter()
        .filter(|s| s.kind == "lone" && bursts.iter().any(|b| b.workers == s.workers));
    let mut at: Vec<(f64, &Scenario)> = lone.map(|s| (1.0, s)).collect();
    at.extend(bursts.iter().map(|s| (f64::from(s.jobs), *s)));
    at.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Zero has no place on a log axis, and a run with no samples has no latency.
    let line = |run: fn(&Scenario) -> &Run, p99: bool| -> Vec<(f64, f64)> {
        at.iter()
            .filter(|(x, s)| *x > 0.0 && run(s).workers_created.n > 0)
            .map(|(x, s)| {
                let p = &run(s).workers_created;
                (*x, if p99 { p.p99_ms } else { p.p50_ms })
            })
            .filter(|(_, y)| *y > 0.0)
            .collect()
    };
    let all = vec![
        series("floor p50", FLOOR, false, line(|s| &s.floor, false)),
        series("floor p99", FLOOR, true, line(|s| &s.floor, true)),
        series("operator p50", OPERATOR, false, line(|s| &s.operator, false)),
        series("operator p99", OPERATOR, true, line(|s| &s.operator, true)),
    ];
    let (xs, ys): (Vec<f64>, Vec<f64>) = all.iter().flat_map(|s| s.points.iter().copied()).unzip();
    if bursts.is_empty() || xs.is_empty() {
        return Ok(false);
    }
    register_font()?;
    let (x0, x1) = log_bounds(min(&xs), max(&xs));
    let (y0, y1) = log_bounds(min(&ys), max(&ys));
    let root = BitMapBackend::new(file, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = chart_on(&root, title, (x0..x1).log_scale(), (y0..y1).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("jobs created at once (burst size)")
        .y_desc("create → all workers created (ms)")
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    plot(&mut chart, all)?;
    root.present()?;
    Ok(true)
}

/// One quantity of a scenario's run, for the y axis.
type Measure = fn(&Scenario, &Run) -> f64;

fn width_chart(report: &Report, title: &str, file: &Path) -> Result<bool, Box<dyn Error>> {
    let mut width: Vec<&Scenario> = report
        .scenarios
        .iter()
        .filter(|s| s.kind == "width" && s.workers > 0)
        .collect();
    width.sort_by_key(|s| s.workers);
    if width.is_empty() {
        return Ok(false);
    }
    register_font()?;
    // Categorical x: widths are usually powers of two, and equal spacing keeps the small ones
    // readable without a log axis's fractional ticks.
    let last = (width.len() - 1) as u32;
    let labels: Vec<String> = width.iter().map(|s| s.workers.to_string()).collect();
    let x_label = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            labels.get(*i as usize).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };
    let root = BitMapBackend::new(file, (1200, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 22))?;
    let panels = root.split_evenly((1, 2));
    let measures: [(&str, &str, Measure); 2] = [
        (
            "Per worker",
            "create → all workers created, p50 ÷ workers (ms)",
            |s, run| run.workers_created.p50_ms / f64::from(s.workers),
        ),
        (
            "Whole job",
            "create → all workers created, p50 (ms)",
            |_, run| run.workers_created.p50_ms,
        ),
    ];
    for (panel, (caption, y_desc, measure)) in panels.iter().zip(measures) {
        let line = |run: fn(&Scenario) -> &Run| -> Vec<(SegmentValue<u32>, f64)> {
            (0u32..)
                .zip(&width)
                .filter(|(_, s)| run(s).workers_created.n > 0)
                .map(|(i, s)| (SegmentValue::CenterOf(i), measure(s, run(s))))
                .collect()
        };
        let all = vec![
            series("floor", FLOOR, false, line(|s| &s.floor)),
            series("operator", OPERATOR, false, line(|s| &s.operator)),
        ];
        let top = all
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max);
        let top = if top > 0.0 { top * 1.15 } else { 1.0 };
        let mut chart = chart_on(panel, caption, (0u32..last).into_segmented(), 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(width.len() + 1)
            .x_desc("workers per job")
            .y_desc(y_desc)
            .x_label_formatter(&x_label)
            .y_label_formatter(&tick)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()?;
        plot(&mut chart, all)?;
    }
    root.present()?;
    Ok(true)
}

/// Per scenario both runs have: all workers created and all Complete as multiples of each
/// run's floor, before (dashed) and after (solid).
fn before_after_chart(report: &Report, title: &str, file: &Path) -> Result<bool, Box<dyn Error>> {
    let Some(before) = &report.before else {
        return Ok(false);
    };
    let pairs = paired(before, report);
    if pairs.is_empty() {
        return Ok(false);
    }
    register_font()?;
    let labels: Vec<String> = pairs.iter().map(|(_, a)| a.name.clone()).collect();
    let x_label = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            labels.get(*i as usize).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };
    let line = |after: bool, v: fn(&Run) -> f64| {
        (0u32..)
            .zip(&pairs)
            .map(|(i, (b, a))| (i, if after { *a } else { *b }))
            .filter(|(_, s)| v(&s.floor) > 0.0)
            .map(|(i, s)| (SegmentValue::CenterOf(i), v(&s.operator) / v(&s.floor)))
            .collect::<Vec<_>>()
    };
    let workers: fn(&Run) -> f64 = |r| r.all_workers_created_s;
    let complete: fn(&Run) -> f64 = |r| r.all_complete_s;
    let all = vec![
        series("all workers created, before", FLOOR, true, line(false, workers)),
        series("all workers created, after", FLOOR, false, line(true, workers)),
        series("all Complete, before", OPERATOR, true, line(false, complete)),
        series("all Complete, after", OPERATOR, false, line(true, complete)),
    ];
    let top = all
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.15;
    let root = BitMapBackend::new(file, (1200, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let last = (pairs.len() - 1) as u32;
    let mut chart = chart_on(&root, title, (0u32..last).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(pairs.len() + 1)
        .y_desc("operator ÷ floor (1 = as fast as a plain client)")
        .x_label_formatter(&x_label)
        .y_label_formatter(&tick)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 15))
        .draw()?;
    plot(&mut chart, all)?;
    root.present()?;
    Ok(true)
}

fn memory_chart(report: &Report, title: &str, file: &Path) -> Result<bool, Box<dyn Error>> {
    let samples = &report.memory;
    if samples.is_empty() {
        return Ok(false);
    }
    register_font()?;
    let x1 = samples
        .iter()
        .map(|m| f64::from(m.jobs))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.05;
    let y1 = samples.iter().map(|m| m.rss_mib).fold(0.0, f64::max).max(1.0) * 1.15;
    let root = BitMapBackend::new(file, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = chart_on(&root, title, 0.0..x1, 0.0..y1)?;
    chart
        .configure_mesh()
        .x_desc("TrainJobs in the operator's cache")
        .y_desc("operator RSS (MiB)")
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    // Split by whether jobs were still running: finished jobs cost only their cached objects,
    // running ones also their pods and in-flight work.
    let (running, finished): (Vec<&MemorySample>, Vec<&MemorySample>) =
        samples.iter().partition(|m| m.finished < m.jobs);
    for (label, color, points) in [
        ("jobs running", OPERATOR, running),
        ("all finished", FLOOR, finished),
    ] {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(
                points
                    .iter()
                    .map(|m| Circle::new((f64::from(m.jobs), m.rss_mib), 3, color.filled())),
            )?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 15))
        .draw()?;
    root.present()?;
    Ok(true)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

// `cargo clippy --all-targets` checks this harness-less bench with `--cfg test` but drops `#[test]`
// functions, so everything the tests use lives inside them: a module-level helper or `use` would be
// dead code there.
#[cfg(test)]
mod tests {
    #[test]
    fn renders_markdown_and_charts() {
        use super::*;

        fn pct(p50: f64, p99: f64) -> Percentiles {
            Percentiles {
                n: 10,
                p50_ms: p50,
                p90_ms: p99,
                p99_ms: p99,
                max_ms: p99,
                mean_ms: p50,
            }
        }

        fn run(scale: f64, writes: &[(&str, u64)], operator: bool) -> Run {
            let writes: BTreeMap<String, u64> = writes.iter().map(|(k, n)| (k.to_string(), *n)).collect();
            Run {
                workers_created: pct(100.0 * scale, 200.0 * scale),
                workers_ready: pct(40.0 * scale, 70.0 * scale),
                launcher_created: pct(50.0 * scale, 80.0 * scale),
                ready_to_launcher: pct(10.0 * scale, 10.0 * scale),
                launcher_succeeded: pct(900.0 * scale, 1400.0 * scale),
                complete: pct(1000.0 * scale, 1500.0 * scale),
                succeeded_to_complete: if operator {
                    pct(25.0, 60.0)
                } else {
                    Percentiles::default()
                },
                watched: None,
                all_workers_created_s: 2.0 * scale,
                all_complete_s: 0.0,
                incomplete: 0,
                writes_per_job: 0.0,
                writes,
                reads: match operator {
                    true => BTreeMap::from([("get secrets".to_string(), 100)]),
                    false => BTreeMap::new(),
                },
                tenants: vec![
                    pct(100.0 * scale, 200.0 * scale),
                    pct(150.0 * scale, 250.0 * scale),
                ],
                path: Some(super::super::model::Path {
                    first_request_ms: if operator { 5.0 } else { 0.0 },
                    first_write_ms: 10.0 * scale,
                    first_pod_ms: 20.0 * scale,
                    workers_ms: 30.0 * scale,
                }),
                peak_rss_mib: operator.then_some(42.5),
                cpu_s: operator.then_some(1.25),
                apiserver_cpu_s: Some(if operator { 3.0 } else { 2.0 }),
                bed_cpu_s: BTreeMap::from([("etcd".to_string(), 4.0 * scale)]),
                watch_events_per_job: Some(if operator { 60.0 } else { 30.0 }),
                reconciles_per_job: operator.then_some(4.5),
                reconcile_errors: operator.then_some(0),
                operator_pods_created_mean_ms: operator.then_some(110.0),
            }
        }

        fn scenario(kind: &str, name: &str, jobs: u32, workers: u32, scale: f64) -> Scenario {
            let w = u64::from(jobs * (workers + 1));
            let status = u64::from(jobs) * 3;
            let mut floor = run(1.0, &[("create pods", w)], false);
            let mut operator = run(
                scale,
                &[("create pods", w), ("patch trainjobs/status", status)],
                true,
            );
            floor.writes_per_job = w as f64 / f64::from(jobs);
            operator.writes_per_job = (w + status) as f64 / f64::from(jobs);
            Scenario {
                kind: kind.into(),
                name: name.into(),
                jobs,
                workers,
                floor,
                job_floor: None,
                operator,
                rounds: Vec::new(),
            }
        }

        let report = Report {
            date: "2026-11-25T10:00:00Z".into(),
            machine: BTreeMap::from([("cpu".into(), "Test CPU".into())]),
            versions: BTreeMap::from([("kubernetes".into(), "v1.36.0".into())]),
            nodes: 4,
            pods_per_node: 110,
            operator_settings: BTreeMap::from([("--concurrency".into(), "16".into())]),
            scenarios: vec![
                scenario("lone", "one job × 8 workers", 1, 8, 1.5),
                Scenario {
                    job_floor: Some(Run {
                        all_complete_s: 8.0,
                        writes_per_job: 12.0,
                        ..run(1.5, &[], false)
                    }),
                    rounds: vec![
                        RoundRatios {
                            complete: 1.25,
                            all_workers: 1.5,
                            apiserver_cpu: Some(1.25),
                            complete_to_job_floor: None,
                        },
                        RoundRatios {
                            complete: 2.0,
                            all_workers: 2.0,
                            apiserver_cpu: Some(1.5),
                            complete_to_job_floor: Some(1.0),
                        },
                    ],
                    ..scenario("burst", "burst of 100 jobs × 8 workers", 100, 8, 2.0)
                },
                Scenario {
                    operator: Run {
                        watched: Some(Watched {
                            sessions: 20,
                            reports: 300,
                            accepted: 299,
                            report_answer: pct(12.0, 80.0),
                            complete_shown_after: pct(4.0, 250.0),
                            complete_not_shown: 0,
                            views_per_job_and_session: 6.5,
                            dashboard_peak_rss_mib: 88.25,
                            dashboard_cpu_s: 3.5,
                        }),
                        ..scenario("burst", "", 100, 8, 2.5).operator
                    },
                    ..scenario("burst", "burst of 100 jobs × 8 workers, watched", 100, 8, 2.5)
                },
                scenario("width", "one job × 2 workers", 1, 2, 1.25),
                scenario("width", "one job × 64 workers", 1, 64, 3.0),
            ],
            memory: (0..20)
                .map(|i| MemorySample {
                    t_s: f64::from(i),
                    jobs: i * 50,
                    finished: if i > 12 { i * 50 } else { i * 20 },
                    rss_mib: 30.0 + f64::from(i) * 2.5,
                })
                .collect(),
            micro: BTreeMap::from([("resolve a 32-node job".into(), 12.345)]),
            admission: Some(super::super::model::Admission {
                creates: 20,
                floor: Percentiles::of(&[std::time::Duration::from_millis(2)]),
                webhook: Percentiles::of(&[std::time::Duration::from_millis(5)]),
            }),
            kept: Some(super::super::model::Kept {
                jobs: 10_000,
                finished: 1000,
                settle_s: 42.0,
                rss_mib: 96.5,
                peak_rss_mib: 101.25,
            }),
            before: Some(Baseline {
                operator: "0.1.0 (abc1234)".into(),
                date: "2026-11-24T10:00:00Z".into(),
                scenarios: vec![scenario("burst", "burst of 100 jobs × 8 workers", 100, 8, 4.0)],
                kept: Some(super::super::model::Kept {
                    rss_mib: 120.0,
                    ..Default::default()
                }),
            }),
        };

        let md = markdown(&report, &[("Burst".to_string(), "bench-burst.png".to_string())]);
        assert!(md.contains("| with the webhook | 5.0 | 5.0 |"), "{md}");
        for want in [
            "# Benchmarks",
            "the floor",
            "| cpu | Test CPU |",
            "| kubernetes | v1.36.0 |",
            "| `--concurrency` | 16 |",
            "| kwok nodes | 4 |",
            "## Lone job",
            "## Bursts",
            "## Width",
            // Workers created, workers Ready, launcher created, launcher Succeeded, Complete:
            // floor, operator, ratio (p50 / p99); then the operator's own part of the end, and
            // the last worker Ready → launcher, floor and operator.
            "| burst of 100 jobs × 8 workers | 100 / 200 | 200 / 400 | 2.00× / 2.00× | 40 / 70 | 80 / 140 | 2.00× / 2.00× | 50 / 80 | 100 / 160 | 2.00× / 2.00× | 900 / 1400 | 1800 / 2800 | 2.00× / 2.00× | 1000 / 1500 | 2000 / 3000 | 2.00× / 2.00× | 25 / 60 | 10 / 10 | 20 / 20 |",
            // Where the CPU went: etcd 4 s under the floor, 8 s under the operator (scale 2).
            "| burst of 100 jobs × 8 workers | 4.0 → 8.0 |",
            // Every job Complete 0 / 8 / 0 s; API server CPU 2 / 2 / 3 s, writes 12 / 12 per job.
            "| burst of 100 jobs × 8 workers | 0.00 | 8.00 | 0.00 | 0.00× | 2.0 | 2.0 | 3.0 | 1.50× | 12.0 | 12.0 | 30 | 60 |",
            "| burst of 100 jobs × 8 workers | 1.25×, 2.00× | –, 1.00× | 1.50×, 2.00× | 1.25×, 1.50× |",
            "## Watched",
            "| burst of 100 jobs × 8 workers, watched | 299 / 300 | 12 / 80 | 4.0 / 250 / 250 | 0 | 6.5 | 88.2 | 3.5 |",
            "| one job × 2 workers | 100 / 200 | 125 / 250 | 1.25× / 1.25× |",
            // All workers created, then a zero floor for all Complete.
            "| one job × 64 workers | 2.00 | 6.00 | 3.00× | 0.00 | 0.00 | – | 0 / 0 |",
            // Writes per job: floor 9, operator 9 + 3; then RSS, CPU, the API server's CPU,
            // watch events, reconciles, errors, the two means.
            "| one job × 8 workers | 9.0 | 12.0 | 1.33× | 42.5 | 1.25 | 2.0 | 3.0 | 1.50× | 30 | 60 | 4.5 | 0 | 150 / 110 |",
            "| patch trainjobs/status | 3.0 | 3.0 | 3.0 | 3.0 |",
            "| create pods | 9.0 | 9.0 | 9.0 | 3.0 | 65.0 |",
            "![Burst](bench-burst.png)",
            "| resolve a 32-node job | 12.345 |",
            "The operator started over 10000 TrainJobs already in the cluster (1000 finished",
            "| operator RSS, settled (MiB) | 96.5 |",
            // The lone job's path: floor 10 / 20 / 30 ms; the operator's first request at 5,
            // then 15 / 30 / 45 ms (scale 1.5).
            "| one job × 8 workers | 10 | 20 | 30 | 5.0 | 15 | 30 | 45 |",
            "## Reads per job by verb and resource",
            "| get secrets | 100.0 | 1.0 | 1.0 | 100.0 | 100.0 |",
            // Two tenants: p50 100 and 150 ms (× 2 for the operator of the burst).
            "| burst of 100 jobs × 8 workers | 2 | 100 – 150 | 1.50× | 200 – 300 | 1.50× |",
            "## Before and after",
            "0.1.0 (abc1234)",
            // The burst took 4× its floor before and 2× after; the other scenarios have no pair.
            "| burst of 100 jobs × 8 workers | 4.00× → 2.00× |",
            "the operator's RSS once settled: 120.0 → 96.5 MiB",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        assert!(!md.contains("## Steady state"), "no steady scenarios, no section");
        let (lone, burst) = (md.find("## Lone job").unwrap(), md.find("## Bursts").unwrap());
        assert!(lone < burst, "sections follow the fixed kind order");

        let dir = std::env::temp_dir().join(format!("report-charts-{}", std::process::id()));
        let drawn = charts(&report, &dir).unwrap();
        let files: Vec<&str> = drawn.iter().map(|(_, f)| f.as_str()).collect();
        assert_eq!(
            files,
            [
                "bench-burst.png",
                "bench-width.png",
                "bench-memory.png",
                "bench-before-after.png"
            ]
        );
        for file in files {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            assert!(bytes.starts_with(b"\x89PNG"), "{file} is a PNG");
            assert!(bytes.len() > 5000, "{file} has something drawn");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ratio_guards_zero_floor() {
        use super::ratio;

        assert_eq!(ratio(3.0, 0.0), "–");
        assert_eq!(ratio(f64::NAN, 1.0), "–");
        assert_eq!(ratio(2.469, 2.0), "1.23×");
    }

    #[test]
    fn empty_data_skips_charts() {
        use super::*;

        let dir = std::env::temp_dir().join(format!("report-nocharts-{}", std::process::id()));
        assert!(charts(&Report::default(), &dir).unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
