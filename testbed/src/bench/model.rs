//! What `make bench` measures, as it is written to `BENCHMARKS.json` and rendered into
//! `docs/development/benchmarks.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One whole `make bench` run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// CPU model, cores, memory, kernel.
    pub machine: BTreeMap<String, String>,
    /// Component versions: operator commit, Kubernetes, kwok, Rust.
    pub versions: BTreeMap<String, String>,
    /// Kwok nodes in the bed and how many pods each takes.
    pub nodes: u32,
    /// Pods per node.
    pub pods_per_node: u32,
    /// Operator settings that matter for the figures (`--concurrency`, ...).
    pub operator_settings: BTreeMap<String, String>,
    /// Scenarios, in the order they ran.
    pub scenarios: Vec<Scenario>,
    /// Operator RSS against TrainJobs in its cache, sampled while the 1000-job burst ran and
    /// while its finished jobs were kept (steady state).
    pub memory: Vec<MemorySample>,
    /// Pure-core micro benchmarks: label → microseconds per operation.
    pub micro: BTreeMap<String, f64>,
    /// What admission adds to a TrainJob create.
    pub admission: Option<Admission>,
    /// The operator's memory with many TrainJobs kept (TC-SCALE).
    #[serde(default)]
    pub kept: Option<Kept>,
    /// An earlier operator's run of the same harness, to compare with (`BENCH_BEFORE`).
    #[serde(default)]
    pub before: Option<Baseline>,
}

/// The scenarios of an earlier operator, measured by the same harness against its own floor.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Baseline {
    /// Which operator: its version and commit.
    pub operator: String,
    /// When that run started.
    pub date: String,
    pub scenarios: Vec<Scenario>,
    pub kept: Option<Kept>,
}

/// The operator started over many TrainJobs already in the cluster: its memory once it has
/// reconciled them all.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Kept {
    /// TrainJobs in the cluster.
    pub jobs: u32,
    /// Of those, finished (the rest are suspended: no pods).
    pub finished: u32,
    /// From its start until it had reconciled every job, seconds.
    pub settle_s: f64,
    /// Resident memory once settled, and its peak, MiB.
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

/// TrainJob creates one at a time, without and with the operator's admission webhook.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Admission {
    /// Creates in each run.
    pub creates: u32,
    /// Without the webhook.
    pub floor: Percentiles,
    /// With the shipped webhook configurations calling the operator.
    pub webhook: Percentiles,
}

/// One scenario, run once by the plain client (the floor) and once through the operator.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Scenario {
    /// `lone`, `burst`, `width` or `steady`.
    pub kind: String,
    /// Human-readable name, e.g. "burst of 100 jobs × 8 workers".
    pub name: String,
    /// TrainJobs in the scenario.
    pub jobs: u32,
    /// Workers per job (`numNodes`).
    pub workers: u32,
    /// The plain client creating the same objects with no operator.
    pub floor: Run,
    /// The same client also keeping each TrainJob (its status, Events and key) as the Kubeflow
    /// API asks of any implementation: a labelled extra, for the bursts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_floor: Option<Run>,
    /// The operator (release build, its own process).
    pub operator: Run,
    /// Each round's ratios, in the order they ran, when the scenario ran more than once; the
    /// runs above are the round of the median every-job-Complete ratio.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<RoundRatios>,
}

/// One round of a scenario, as ratios of the operator's run to the floor's of that round.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoundRatios {
    /// Every job Complete.
    pub complete: f64,
    /// Every worker created.
    pub all_workers: f64,
    /// The API server's CPU.
    pub apiserver_cpu: Option<f64>,
    /// Every job Complete, against the floor that also keeps each TrainJob.
    pub complete_to_job_floor: Option<f64>,
}

impl RoundRatios {
    /// The ratios of `operator` to `floor` (and to `job_floor`, when it ran).
    pub fn of(floor: &Run, job_floor: Option<&Run>, operator: &Run) -> RoundRatios {
        let ratio = |o: f64, f: f64| if f > 0.0 { o / f } else { f64::NAN };
        RoundRatios {
            complete: ratio(operator.all_complete_s, floor.all_complete_s),
            all_workers: ratio(operator.all_workers_created_s, floor.all_workers_created_s),
            apiserver_cpu: operator
                .apiserver_cpu_s
                .zip(floor.apiserver_cpu_s)
                .map(|(o, f)| ratio(o, f)),
            complete_to_job_floor: job_floor.map(|j| ratio(operator.all_complete_s, j.all_complete_s)),
        }
    }
}

/// One run of a scenario. Latencies run from the moment each job was created (the floor: the
/// moment it started creating the job's objects), as the bench's own watch saw the objects.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    /// Create → the job's last worker pod created.
    pub workers_created: Percentiles,
    /// The same for each tenant's jobs, when the scenario has several tenants (namespaces).
    #[serde(default)]
    pub tenants: Vec<Percentiles>,
    /// Create → the job's last worker pod Ready.
    #[serde(default)]
    pub workers_ready: Percentiles,
    /// Create → the launcher pod created.
    pub launcher_created: Percentiles,
    /// The job's last worker Ready → its launcher created: the reaction to a ready gang (the
    /// floor's from its own watch, the operator's from its watches and queue).
    #[serde(default)]
    pub ready_to_launcher: Percentiles,
    /// Create → the launcher pod Succeeded (kwok's part ends there).
    #[serde(default)]
    pub launcher_succeeded: Percentiles,
    /// Create → Complete (the floor: the launcher Succeeded).
    pub complete: Percentiles,
    /// The launcher Succeeded → the TrainJob Complete: the operator's own reaction (none for
    /// the floor, whose job is done when its launcher is).
    #[serde(default)]
    pub succeeded_to_complete: Percentiles,
    /// First create → the last worker of the whole scenario created, in seconds.
    pub all_workers_created_s: f64,
    /// First create → the last job Complete, in seconds.
    pub all_complete_s: f64,
    /// Jobs that did not reach each point before the deadline.
    pub incomplete: u32,
    /// API writes by the operator's identity, by `verb resource[/subresource]`, summed over the
    /// scenario (from the API server's audit log).
    pub writes: BTreeMap<String, u64>,
    /// All writes divided by jobs.
    pub writes_per_job: f64,
    /// API reads by the operator's identity in the scenario's namespaces, as `writes`.
    #[serde(default)]
    pub reads: BTreeMap<String, u64>,
    /// Where a job's time went until its workers existed (medians), in scenarios of one job
    /// at a time.
    #[serde(default)]
    pub path: Option<Path>,
    /// Operator's peak resident memory during the scenario, MiB (none for the floor).
    pub peak_rss_mib: Option<f64>,
    /// Operator CPU time (user + system) during the scenario, seconds.
    pub cpu_s: Option<f64>,
    /// The API server's CPU time (user + system) during the scenario, seconds.
    #[serde(default)]
    pub apiserver_cpu_s: Option<f64>,
    /// CPU time of the bed's other parts during the scenario (etcd, kube-scheduler,
    /// kube-controller-manager, kwok), seconds by binary: on shared cores, where a scenario's
    /// extra time goes.
    #[serde(default)]
    pub bed_cpu_s: BTreeMap<String, f64>,
    /// Watch events the API server sent (to every watcher: the bench's own watch as well),
    /// divided by the scenario's jobs.
    #[serde(default)]
    pub watch_events_per_job: Option<f64>,
    /// The operator's reconciles divided by the scenario's jobs.
    #[serde(default)]
    pub reconciles_per_job: Option<f64>,
    /// `trainjob_reconcile_errors_total` summed over labels, during the scenario.
    pub reconcile_errors: Option<u64>,
    /// The operator's own `trainjob_pods_created_after_seconds` mean during the scenario, ms,
    /// to compare with `workers_created` measured by the bench's watch.
    pub operator_pods_created_mean_ms: Option<f64>,
    /// What the people watching the scenario met, when they did (the operator's run only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched: Option<Watched>,
}

/// A scenario with people watching it: its jobs' training code reporting progress to the
/// status server, and sessions of the dashboard's page open on its namespace.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Watched {
    /// Dashboard sessions open throughout.
    pub sessions: u32,
    /// Progress reports posted to the status server, and those it accepted (200).
    pub reports: u32,
    pub accepted: u32,
    /// A report's POST until its answer.
    pub report_answer: Percentiles,
    /// Each job's Complete on each session's page, after the bench's own watch saw it.
    pub complete_shown_after: Percentiles,
    /// (job, session) pairs whose page had not shown the job Complete a minute after the bench's
    /// own watch saw every job end.
    pub complete_not_shown: u32,
    /// Job views a session received, per job (a view is sent when what the page shows changed).
    pub views_per_job_and_session: f64,
    /// The dashboard server's peak resident memory over the scenario, MiB.
    pub dashboard_peak_rss_mib: f64,
    /// The dashboard server's CPU time (user + system) over the scenario, seconds.
    pub dashboard_cpu_s: f64,
}

/// Where a job's time went until its workers existed, by the API server's clock (its audit
/// log): milliseconds from the TrainJob's create (the floor, which has none: from its first
/// request) to the first request naming one of the job's objects, the first write of one,
/// the first pod create, and the last worker created.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Path {
    pub first_request_ms: f64,
    pub first_write_ms: f64,
    pub first_pod_ms: f64,
    pub workers_ms: f64,
}

impl Path {
    /// The median of each step over `paths`; `None` for none.
    pub fn median(paths: &[Path]) -> Option<Path> {
        let median = |f: fn(&Path) -> f64| {
            let mut v: Vec<f64> = paths.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        (!paths.is_empty()).then(|| Path {
            first_request_ms: median(|p| p.first_request_ms),
            first_write_ms: median(|p| p.first_write_ms),
            first_pod_ms: median(|p| p.first_pod_ms),
            workers_ms: median(|p| p.workers_ms),
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub n: u32,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (any order).
    pub fn of(samples: &[Duration]) -> Percentiles {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if ms.is_empty() {
                0.0
            } else {
                let rank = (p * ms.len() as f64).ceil() as usize;
                ms[rank.clamp(1, ms.len()) - 1]
            }
        };
        Percentiles {
            n: ms.len() as u32,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
            mean_ms: if ms.is_empty() {
                0.0
            } else {
                ms.iter().sum::<f64>() / ms.len() as f64
            },
        }
    }
}

/// Operator memory with a number of TrainJobs in its cache.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct MemorySample {
    /// Seconds since the sampled phase started.
    pub t_s: f64,
    /// TrainJobs that exist (and so are in the operator's cache).
    pub jobs: u32,
    /// Of those, finished.
    pub finished: u32,
    /// Resident memory, MiB.
    pub rss_mib: f64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_rank() {
        use super::*;
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&d);
        assert_eq!(
            (p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
    }
}
