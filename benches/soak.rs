//! `make soak DURATION=30m`: a steady stream of TrainJobs through the release operator for a
//! long time, sampling its resident memory, CPU and the watches it holds open on the API server.
//!
//! Jobs accumulate until `SOAK_KEEP` finished ones are kept; from then on the oldest is deleted
//! for each new one, so the cluster's size stays constant while the jobs the operator has handled
//! keep growing. Memory that tracks the cluster's objects is the operator's caches; memory that
//! grows with the jobs it has handled is a leak. The report (a section of
//! `docs/development/benchmarks.md` and `benches/results/soak.json`) gives both slopes. Asserts
//! nothing about time.
//!
//! `SOAK_DURATION` (`make soak DURATION=…`: `90s`, `30m`, `2h`), `SOAK_RATE` (jobs per second,
//! default 2), `SOAK_KEEP` (default 2000).

use trainjob_testbed::bench::section;
use trainjob_testbed::support;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde::Serialize;
use serde_json::json;
use support::process::{OperatorProcess, metric_sum};
use support::{Identity, bench_bed};
use trainjob_operator::api::TrainJob;

const WORKERS: u32 = 2;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// One sample of the operator and the cluster.
#[derive(Clone, Debug, Serialize)]
struct Sample {
    t_s: f64,
    /// Jobs created so far.
    created: u64,
    /// Jobs the operator has finished (Complete or Failed) so far.
    finished: u64,
    /// TrainJobs in the cluster now (finished ones kept, plus running ones).
    in_cluster: u64,
    rss_mib: f64,
    /// CPU over the last interval, percent of one core.
    cpu_pct: f64,
    /// Watches the operator holds open (the API server's long-running WATCH requests, less those
    /// open before the operator started).
    watches: f64,
}

#[derive(Debug, Serialize)]
struct Soak {
    date: String,
    duration_s: f64,
    rate_per_s: f64,
    keep: u64,
    workers: u32,
    samples: Vec<Sample>,
    /// Least-squares slope of RSS against TrainJobs in the cluster while they accumulate, KiB
    /// per job: what a kept job costs in the caches.
    kib_per_kept_job: Option<f64>,
    /// Slope of RSS against jobs finished once the cluster's size is constant, KiB per 1000
    /// jobs: a leak would show here.
    kib_per_1000_handled: Option<f64>,
    /// Jobs created but not Complete at the end (deleted ones aside).
    incomplete: u64,
    reconcile_errors: u64,
    operator_cpu_s: f64,
    peak_rss_mib: f64,
}

fn env_duration() -> Duration {
    let raw = std::env::var("SOAK_DURATION").unwrap_or_else(|_| "30m".into());
    let (n, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("SOAK_DURATION={raw}: want e.g. 90s, 30m, 2h"));
    match unit {
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => panic!("SOAK_DURATION={raw}: the unit is s, m or h"),
    }
}

fn env_number(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
        .unwrap_or(default)
}

/// Sum of the API server's open WATCH requests.
async fn watches(admin: &Client) -> f64 {
    let request = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = admin.request_text(request).await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("apiserver_longrunning_requests{") && l.contains("verb=\"WATCH\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Least-squares slope of y against x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(sxy, sxx), (x, y)| {
        (sxy + (x - mx) * (y - my), sxx + (x - mx) * (x - mx))
    });
    (sxx > 0.0).then(|| sxy / sxx)
}

fn job(name: &str, ns: &str) -> TrainJob {
    serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"runtimeRef": {"name": "mpi-openmpi"}, "trainer": {"numNodes": WORKERS}},
    }))
    .expect("job")
}

fn main() {
    let duration = env_duration();
    let rate = env_number("SOAK_RATE", 2.0);
    let keep = env_number("SOAK_KEEP", 2000.0) as u64;
    let bed = bench_bed(4, 1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt.block_on(soak(bed, duration, rate, keep));
    section::SOAK.publish("soak", &report, &markdown(&report));
}

async fn soak(bed: &'static trainjob_testbed::Bed, duration: Duration, rate: f64, keep: u64) -> Soak {
    let admin = bed.client(Identity::Admin).await.expect("admin client");
    let ns = bed.namespace("soak").await.expect("namespace");
    let jobs: Api<TrainJob> = Api::namespaced(admin.clone(), &ns);
    let before = watches(&admin).await;
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak-operator.log");
    let args = ["--network-policies".to_string(), "--disable-webhook".into()];
    let op = OperatorProcess::start(bed, support::free_port(), &args, log).await;
    println!(
        "soak: {duration:?}, {rate} jobs/s of {WORKERS} workers, {keep} finished jobs kept; the operator's log: target/tmp/soak-operator.log"
    );

    let t0 = Instant::now();
    let mut created = 0u64;
    let mut alive: VecDeque<String> = VecDeque::new();
    let mut samples = Vec::new();
    let mut next_sample = t0;
    let (mut cpu_then, mut t_then) = (op.cpu_s(), t0);
    while t0.elapsed() < duration {
        let due = (t0.elapsed().as_secs_f64() * rate) as u64;
        while created < due {
            let name = format!("soak-{created:06}");
            // A failed create (an API server hiccup) is tried again on the next tick.
            if jobs
                .create(&PostParams::default(), &job(&name, &ns))
                .await
                .is_err()
            {
                break;
            }
            created += 1;
            alive.push_back(name);
            if alive.len() as u64 > keep
                && let Some(oldest) = alive.pop_front()
            {
                let _ = jobs.delete(&oldest, &DeleteParams::background()).await;
            }
        }
        if Instant::now() >= next_sample {
            let metrics = op.metrics().await;
            let finished = metric_sum(&metrics, "trainjob_jobs_completed_total")
                + metric_sum(&metrics, "trainjob_jobs_failed_total");
            let (cpu, now) = (op.cpu_s(), Instant::now());
            let sample = Sample {
                t_s: t0.elapsed().as_secs_f64(),
                created,
                finished: finished as u64,
                in_cluster: alive.len() as u64,
                rss_mib: op.rss_mib(),
                cpu_pct: 100.0 * (cpu - cpu_then) / (now - t_then).as_secs_f64().max(1e-3),
                watches: watches(&admin).await - before,
            };
            println!(
                "  t {:>6.0} s | created {:>6} | finished {:>6} | in cluster {:>5} | RSS {:>6.1} MiB | CPU {:>5.1} % | watches {:>3}",
                sample.t_s,
                sample.created,
                sample.finished,
                sample.in_cluster,
                sample.rss_mib,
                sample.cpu_pct,
                sample.watches
            );
            samples.push(sample);
            (cpu_then, t_then) = (cpu, now);
            next_sample += SAMPLE_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The jobs still in the cluster must all finish: wait a little for the last ones.
    let deadline = Instant::now() + Duration::from_secs(120);
    let incomplete = loop {
        let listed = jobs.list(&ListParams::default()).await.expect("jobs");
        let open: Vec<String> = listed
            .items
            .iter()
            .filter(|j| {
                !j.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Complete" && c.status == "True")
                })
            })
            .map(|j| {
                let conditions: Vec<String> = j
                    .status
                    .iter()
                    .flat_map(|s| &s.conditions)
                    .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                    .collect();
                format!(
                    "{} {conditions:?}",
                    j.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect();
        if open.is_empty() || Instant::now() > deadline {
            for job in open.iter().take(5) {
                println!("  not Complete: {job}");
            }
            break open.len() as u64;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let metrics = op.metrics().await;
    let (operator_cpu_s, peak_rss_mib) = (op.cpu_s(), op.peak_rss_mib());
    op.stop();

    // Growth while jobs accumulate (against jobs in the cluster), then once their number is
    // constant (against jobs handled), skipping the first minute's warm-up.
    let growing: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t_s > 60.0 && s.in_cluster < keep)
        .map(|s| (s.in_cluster as f64, s.rss_mib * 1024.0))
        .collect();
    let steady: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.in_cluster >= keep)
        .map(|s| (s.finished as f64 / 1000.0, s.rss_mib * 1024.0))
        .collect();
    Soak {
        date: trainjob_operator::lifecycle::now().0.to_string(),
        duration_s: duration.as_secs_f64(),
        rate_per_s: rate,
        keep,
        workers: WORKERS,
        samples,
        kib_per_kept_job: slope(&growing),
        kib_per_1000_handled: slope(&steady),
        incomplete,
        reconcile_errors: metric_sum(&metrics, "trainjob_reconcile_errors_total") as u64,
        operator_cpu_s,
        peak_rss_mib,
    }
}

fn markdown(r: &Soak) -> String {
    let fmt =
        |v: Option<f64>, unit: &str| v.map_or("– (too few samples)".into(), |v| format!("{v:.1} {unit}"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Soak\n\n`make soak DURATION={}m`, run on {}: {} TrainJobs per second of {} workers each, for {:.0} minutes. Finished jobs are kept until {} are; from then on the oldest is deleted for each new one, so the cluster's size stays constant while the jobs the operator handles keep growing.\n",
        (r.duration_s / 60.0).round(),
        r.date,
        r.rate_per_s,
        r.workers,
        r.duration_s / 60.0,
        r.keep
    );
    let last = r.samples.last();
    let _ = writeln!(
        out,
        "| Result | |\n|:---|---:|\n| jobs created | {} |\n| jobs finished | {} |\n| not Complete at the end | {} |\n| reconcile errors | {} |\n| memory per kept job (RSS slope while jobs accumulate) | {} |\n| memory per 1000 jobs handled at constant cluster size (a leak shows here) | {} |\n| operator peak RSS | {:.1} MiB |\n| operator CPU, whole run | {:.0} s ({:.1} % of a core) |\n",
        last.map_or(0, |s| s.created),
        last.map_or(0, |s| s.finished),
        r.incomplete,
        r.reconcile_errors,
        fmt(r.kib_per_kept_job, "KiB"),
        fmt(r.kib_per_1000_handled, "KiB"),
        r.peak_rss_mib,
        r.operator_cpu_s,
        100.0 * r.operator_cpu_s / r.duration_s.max(1.0),
    );
    let _ = writeln!(
        out,
        "| Minute | Jobs created | finished | in the cluster | RSS (MiB) | CPU (% of a core, last 10 s) | Open watches |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    // About a dozen rows, evenly spread, and the last.
    let every = (r.samples.len() / 12).max(1);
    for (i, s) in r.samples.iter().enumerate() {
        if i % every == 0 || i + 1 == r.samples.len() {
            let _ = writeln!(
                out,
                "| {:.1} | {} | {} | {} | {:.1} | {:.1} | {} |",
                s.t_s / 60.0,
                s.created,
                s.finished,
                s.in_cluster,
                s.rss_mib,
                s.cpu_pct,
                s.watches
            );
        }
    }
    out.push('\n');
    out
}
