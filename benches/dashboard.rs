//! `make bench`'s dashboard part: the dashboard's release binary (`trainjob-dashboard`, as it
//! runs in a cluster, each request with its person's token) in front of a namespace of
//! 1000 finished TrainJobs with their objects, and 20 live sessions of the page open on it.
//!
//! It measures what a person feels and what the server costs, each against a floor measured in
//! the same run: the time to the first list (against a plain client making the same three list
//! calls), the time from a status change to every open page (against a plain watch of the same
//! TrainJobs), and the server's resident memory, idle and with the sessions open. Asserts
//! nothing about time. `BENCH_SCALE=quick`: 100 jobs.

use trainjob_testbed::bench::section;
use trainjob_testbed::support;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde::Serialize;
use serde_json::json;
use support::process::OperatorProcess;
use support::sse::{Events, get};
use support::{Identity, bench_bed};
use tokio::sync::mpsc;
use trainjob_operator::api::TrainJob;

const SESSIONS: usize = 20;
const UPDATES: usize = 10;
const LISTS: usize = 5;

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    jobs: usize,
    sessions: usize,
    /// The first list through the dashboard (a new token: its client and connection made).
    first_list_ms: f64,
    /// The median of the next lists.
    list_ms: f64,
    /// The same three list calls by a plain client (median).
    floor_list_ms: f64,
    /// Opening a session's feed until its snapshot arrived: median and slowest of the sessions.
    snapshot_ms_p50: f64,
    snapshot_ms_max: f64,
    /// A status change until every open session had it (median over the updates), and the
    /// slowest update.
    update_ms_p50: f64,
    update_ms_max: f64,
    /// The same change seen by a plain watch (median).
    floor_update_ms_p50: f64,
    rss_idle_mib: f64,
    rss_sessions_mib: f64,
    peak_rss_mib: f64,
    /// The server's memory per open session (RSS with the sessions less idle, divided).
    kib_per_session: f64,
    cpu_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let quick = std::env::var("BENCH_SCALE").is_ok_and(|s| s == "quick");
    let jobs = if quick { 100 } else { 1000 };
    let bed = bench_bed(4, 1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt.block_on(run(bed, jobs));
    println!("{report:#?}");
    section::DASHBOARD.publish("dashboard", &report, &markdown(&report));
}

/// `jobs` finished TrainJobs in a namespace where the tenant holds `edit`.
async fn namespace(bed: &'static trainjob_testbed::Bed, jobs: usize) -> String {
    let admin = bed.client(Identity::Admin).await.expect("admin client");
    let ns = bed.namespace("dash-bench").await.expect("namespace");
    support::jobs::grant_edit(&admin, &ns, Identity::TenantA).await;
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-bench-operator.log");
    let op = OperatorProcess::start(bed, support::free_port(), &["--disable-webhook".into()], log).await;
    let api: Api<TrainJob> = Api::namespaced(admin, &ns);
    futures::stream::iter(0..jobs)
        .map(|i| {
            let api = api.clone();
            async move {
                let job: TrainJob = serde_json::from_value(json!({
                    "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                    "metadata": {"name": format!("job-{i:04}")},
                    "spec": {"runtimeRef": {"name": "mpi-openmpi"}, "trainer": {"numNodes": 1}},
                }))
                .expect("job");
                api.create(&PostParams::default(), &job).await.map(drop)
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("creating the jobs");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let listed = api.list(&ListParams::default()).await.expect("jobs");
        let complete = listed
            .items
            .iter()
            .filter(|j| {
                j.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Complete" && c.status == "True")
                })
            })
            .count();
        if complete == jobs || Instant::now() > deadline {
            println!("  {complete} of {jobs} jobs Complete");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    op.stop();
    ns
}

async fn run(bed: &'static trainjob_testbed::Bed, jobs: usize) -> Report {
    let ns = namespace(bed, jobs).await;
    let tenant = bed.client(Identity::TenantA).await.expect("tenant client");
    let admin = bed.client(Identity::Admin).await.expect("admin client");
    let port = support::free_port();
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-bench.log");
    let server = OperatorProcess::dashboard(bed, port, log).await;
    let base = format!("http://127.0.0.1:{port}");
    let token = Identity::TenantA.token();

    // The list, as the page's first look at the namespace.
    let mut lists = Vec::new();
    for _ in 0..=LISTS {
        let t = Instant::now();
        let (status, body) = get(&format!("{base}/api/namespaces/{ns}/trainjobs"), &token)
            .await
            .expect("list");
        assert!(status.is_success(), "{status}");
        let body: Vec<u8> = body
            .try_fold(Vec::new(), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await
            .expect("body");
        let items = serde_json::from_slice::<serde_json::Value>(&body).expect("JSON")["items"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(items, jobs, "every job listed");
        lists.push(ms(t.elapsed()));
    }
    let mut floors = Vec::new();
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=trainjob-operator");
    let all = ListParams::default();
    let (j_api, p_api, c_api) = (
        Api::<TrainJob>::namespaced(tenant.clone(), &ns),
        Api::<Pod>::namespaced(tenant.clone(), &ns),
        Api::<ConfigMap>::namespaced(tenant.clone(), &ns),
    );
    for _ in 0..LISTS {
        let t = Instant::now();
        let (j, p, c) = futures::join!(j_api.list(&all), p_api.list(&managed), c_api.list(&managed));
        assert_eq!(j.expect("jobs").items.len(), jobs);
        p.expect("pods");
        c.expect("configmaps");
        floors.push(ms(t.elapsed()));
    }
    let rss_idle_mib = server.rss_mib();

    // The sessions: each page's feed, read as it comes; every job event reported with its time.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String, i64, Instant)>();
    let (mut snapshots, mut readers) = (Vec::new(), Vec::new());
    for session in 0..SESSIONS {
        let t = Instant::now();
        let (status, body) = get(&format!("{base}/api/namespaces/{ns}/feed"), &token)
            .await
            .expect("feed");
        assert!(status.is_success(), "{status}");
        let mut events = Events::new(body);
        let (event, data) = events
            .next_within(Duration::from_secs(120))
            .await
            .expect("a snapshot");
        assert_eq!(event, "snapshot");
        assert_eq!(data["items"].as_array().map_or(0, Vec::len), jobs);
        snapshots.push(ms(t.elapsed()));
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            while let Some((event, data)) = events.next_within(Duration::from_secs(3600)).await {
                if event == "job" {
                    let name = data["name"].as_str().unwrap_or_default().to_string();
                    let percent = data["progress"]["percent"].as_i64().unwrap_or(-1);
                    if tx.send((session, name, percent, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    // The floor: a plain watch of the same jobs.
    let floor_tx = tx.clone();
    let watched = Api::<TrainJob>::namespaced(tenant.clone(), &ns);
    tokio::spawn(async move {
        let mut changes = watcher(watched, watcher::Config::default()).boxed();
        while let Some(Ok(event)) = changes.next().await {
            if let watcher::Event::Apply(job) = event {
                let percent = job
                    .status
                    .as_ref()
                    .and_then(|s| s.trainer_status.as_ref())
                    .and_then(|t| t.progress_percentage)
                    .map_or(-1, i64::from);
                let name = job.metadata.name.clone().unwrap_or_default();
                if floor_tx
                    .send((usize::MAX, name, percent, Instant::now()))
                    .is_err()
                {
                    return;
                }
            }
        }
    });

    // Status changes, as training code reports progress, one at a time.
    let jobs_api: Api<TrainJob> = Api::namespaced(admin, &ns);
    let (mut updates, mut floor_updates) = (Vec::new(), Vec::new());
    // A second apart, as training code reports (every few seconds at most): the feed's pace
    // (`dashboard::SENDS_PER_SECOND`) then holds none back, and this measures how soon a change
    // reaches every page. How the pace holds back a stream of changes, the watched burst of the
    // operator's benchmark measures.
    let spacing = Duration::from_secs_f64(1.0 / trainjob_operator::dashboard::SENDS_PER_SECOND);
    let mut next = tokio::time::Instant::now();
    for u in 1..=UPDATES {
        tokio::time::sleep_until(next).await;
        next = tokio::time::Instant::now() + spacing;
        let name = format!("job-{:04}", (u * 37) % jobs);
        let percent = (u * 9) as i64;
        let patch = json!({"status": {"trainerStatus": {
            "progressPercentage": percent,
            "lastUpdatedTime": trainjob_operator::lifecycle::now(),
        }}});
        let t = Instant::now();
        jobs_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("a status change");
        let (mut seen, mut floor) = (std::collections::HashSet::new(), None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < SESSIONS || floor.is_none() {
            let Ok(Some((session, job, p, at))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                panic!("update {u}: {} of {SESSIONS} sessions saw it", seen.len());
            };
            if job != name || p != percent {
                continue;
            }
            if session == usize::MAX {
                floor = Some(ms(at - t));
            } else if seen.insert(session) && seen.len() == SESSIONS {
                updates.push(ms(at - t));
            }
        }
        floor_updates.push(floor.unwrap_or(f64::NAN));
    }
    let rss_sessions_mib = server.rss_mib();
    let report = Report {
        date: trainjob_operator::lifecycle::now().0.to_string(),
        jobs,
        sessions: SESSIONS,
        first_list_ms: lists[0],
        list_ms: median(lists[1..].to_vec()),
        floor_list_ms: median(floors),
        snapshot_ms_p50: median(snapshots.clone()),
        snapshot_ms_max: snapshots.iter().copied().fold(0.0, f64::max),
        update_ms_p50: median(updates.clone()),
        update_ms_max: updates.iter().copied().fold(0.0, f64::max),
        floor_update_ms_p50: median(floor_updates),
        rss_idle_mib,
        rss_sessions_mib,
        peak_rss_mib: server.peak_rss_mib(),
        kib_per_session: (rss_sessions_mib - rss_idle_mib) * 1024.0 / SESSIONS as f64,
        cpu_s: server.cpu_s(),
    };
    // The pages close before the server stops.
    readers.iter().for_each(tokio::task::JoinHandle::abort);
    server.stop();
    report
}

/// A session's memory as the report shows it: RSS is the allocator's, which keeps what the
/// lists before the sessions freed, so sessions that fit in that show no growth at all.
fn per_session(kib: f64) -> String {
    match kib > 0.0 {
        true => format!("{kib:.0} KiB"),
        false => "none measurable (the sessions fit in memory the lists had freed)".into(),
    }
}

fn markdown(r: &Report) -> String {
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.1}×", a / b)
        } else {
            "–".into()
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Dashboard\n\n`make bench`, run on {}: the dashboard's release binary (`trainjob-dashboard`, each request with the tenant's token, forwarded to the API server) in front of a namespace of {} finished TrainJobs with their objects, and {} live sessions of the page (its feed) open at once. Floors are a plain client making the same API calls in the same run.\n",
        r.date, r.jobs, r.sessions
    );
    let _ = writeln!(
        out,
        "| Measure | Dashboard | Floor | Ratio |\n|:---|---:|---:|---:|\n| time to the first list (new token) | {:.0} ms | | |\n| time to list, median of {LISTS} | {:.0} ms | {:.0} ms (the three list calls) | {} |\n| a session's feed until its snapshot: median / slowest of {} | {:.0} / {:.0} ms | | |\n| a status change until all {} sessions have it: median / slowest of {UPDATES} | {:.0} / {:.0} ms | {:.0} ms (a plain watch) | {} |\n| server RSS idle / with {} sessions / peak | {:.1} / {:.1} / {:.1} MiB | | |\n| memory per open session | {} | | |\n| server CPU, whole run | {:.1} s | | |\n",
        r.first_list_ms,
        r.list_ms,
        r.floor_list_ms,
        ratio(r.list_ms, r.floor_list_ms),
        r.sessions,
        r.snapshot_ms_p50,
        r.snapshot_ms_max,
        r.sessions,
        r.update_ms_p50,
        r.update_ms_max,
        r.floor_update_ms_p50,
        ratio(r.update_ms_p50, r.floor_update_ms_p50),
        r.sessions,
        r.rss_idle_mib,
        r.rss_sessions_mib,
        r.peak_rss_mib,
        per_session(r.kib_per_session),
        r.cpu_s,
    );
    out
}
