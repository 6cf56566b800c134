//! A burst with people watching it: every job's training code reporting its progress to the
//! status server, and sessions of the dashboard's page open on the namespace, as on a cluster
//! in use. The bench plays both: once a job's launcher pod exists it mints a token bound to that
//! pod (as the kubelet does for its projected volume) and posts [`REPORTS`] reports over TLS,
//! trusting the CA the operator puts in every job's hostfile ConfigMap; each session reads the
//! page's feed through the dashboard's release binary, with a tenant's token, and notes when it
//! first showed each job Complete.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;
use trainjob_operator::names;
use trainjob_operator::progress::{audience, path};
use trainjob_testbed::Bed;
use trainjob_testbed::bench::model::{Percentiles, Watched};
use trainjob_testbed::support::process::OperatorProcess;
use trainjob_testbed::support::sse::{Events, get};
use trainjob_testbed::support::{self, Identity, progress};

use crate::watch::Seen;

/// Progress reports each job's training code sends (the status server takes 10 at once).
const REPORTS: i64 = 3;
/// Sessions of the dashboard's page open throughout.
pub const SESSIONS: usize = 20;
/// Jobs reporting at once: the launchers of a burst come up over a minute or more.
const REPORTING: usize = 16;

/// The dashboard and the reporting training code of one run, until [`Watchers::finish`].
pub struct Watchers {
    dashboard: OperatorProcess,
    sessions: usize,
    /// Per session: each job's first view shown Complete.
    shown: Arc<Mutex<Vec<HashMap<String, Instant>>>>,
    /// Job views every session received, all together.
    views: Arc<AtomicU64>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// Every report's answer (its HTTP status) and how long it took.
    answers: Arc<Mutex<Vec<(u16, Duration)>>>,
    stop_reporting: tokio::sync::oneshot::Sender<()>,
    reporter: tokio::task::JoinHandle<()>,
}

impl Watchers {
    /// Starts the dashboard with `sessions` sessions of the page open on `ns` (each with its
    /// snapshot read), and the training code that reports to the status server on
    /// `status_port` for every launcher that appears in `ns`.
    pub async fn start(
        bed: &'static Bed,
        admin: &Client,
        ns: &str,
        status_port: u16,
        sessions: usize,
    ) -> Watchers {
        support::jobs::grant_edit(admin, ns, Identity::TenantA).await;
        let port = support::free_port();
        let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dashboard-{ns}.log"));
        let dashboard = OperatorProcess::dashboard(bed, port, log).await;
        let token = Identity::TenantA.token();
        let shown = Arc::new(Mutex::new(vec![HashMap::new(); sessions]));
        let views = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        for session in 0..sessions {
            let url = format!("http://127.0.0.1:{port}/api/namespaces/{ns}/feed");
            let (status, body) = get(&url, &token).await.expect("the feed");
            assert!(status.is_success(), "the feed: {status}");
            let mut events = Events::new(body);
            let first = events.next_within(Duration::from_secs(60)).await;
            assert_eq!(first.map(|(e, _)| e).as_deref(), Some("snapshot"));
            let (shown, views) = (shown.clone(), views.clone());
            readers.push(tokio::spawn(async move {
                while let Some((event, data)) = events.next_within(Duration::from_secs(3600)).await {
                    if event != "job" {
                        continue;
                    }
                    views.fetch_add(1, Ordering::Relaxed);
                    if data["phase"] == "Complete" {
                        let name = data["name"].as_str().unwrap_or_default().to_string();
                        shown.lock().expect("shown")[session]
                            .entry(name)
                            .or_insert_with(Instant::now);
                    }
                }
            }));
        }
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (stop_reporting, stop) = tokio::sync::oneshot::channel();
        let code = TrainingCode {
            admin: admin.clone(),
            ns: ns.to_string(),
            status_port,
            answers: answers.clone(),
        };
        Watchers {
            dashboard,
            sessions,
            shown,
            views,
            readers,
            answers,
            stop_reporting,
            reporter: tokio::spawn(code.run(stop)),
        }
    }

    /// Stops reporting (waiting for the reports under way) and closes the pages; what they
    /// measured, against `seen`, the bench's own watch of the same jobs.
    pub async fn finish(self, seen: &HashMap<String, Seen>) -> Watched {
        let _ = self.stop_reporting.send(());
        self.reporter.await.expect("the training code's reports");
        let answers = self.answers.lock().expect("answers").clone();
        // The pages may show the last jobs' ends a little after the bench's own watch did.
        let complete = || {
            seen.iter()
                .filter_map(|(name, s)| s.complete.map(|at| (name, at)))
        };
        let unseen = |shown: &[HashMap<String, Instant>]| {
            complete()
                .map(|(name, _)| shown.iter().filter(|page| !page.contains_key(name)).count())
                .sum::<usize>()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while unseen(&self.shown.lock().expect("shown")) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let dashboard_peak_rss_mib = self.dashboard.peak_rss_mib();
        let dashboard_cpu_s = self.dashboard.cpu_s();
        self.readers.iter().for_each(tokio::task::JoinHandle::abort);
        self.dashboard.stop();
        let shown = self.shown.lock().expect("shown");
        // Each job's Complete on each page, after the bench's watch saw it.
        let lag: Vec<Duration> = complete()
            .flat_map(|(name, at)| {
                shown
                    .iter()
                    .filter_map(move |page| page.get(name).map(|shown| shown.saturating_duration_since(at)))
            })
            .collect();
        let missed = unseen(&shown);
        let jobs = seen.len().max(1) as f64;
        let latencies: Vec<Duration> = answers.iter().map(|(_, took)| *took).collect();
        Watched {
            sessions: self.sessions as u32,
            reports: answers.len() as u32,
            accepted: answers.iter().filter(|(status, _)| *status == 200).count() as u32,
            report_answer: Percentiles::of(&latencies),
            complete_shown_after: Percentiles::of(&lag),
            complete_not_shown: missed as u32,
            views_per_job_and_session: self.views.load(Ordering::Relaxed) as f64
                / jobs
                / self.sessions.max(1) as f64,
            dashboard_peak_rss_mib,
            dashboard_cpu_s,
        }
    }
}

/// The training code of every job in one namespace.
struct TrainingCode {
    admin: Client,
    ns: String,
    status_port: u16,
    answers: Arc<Mutex<Vec<(u16, Duration)>>>,
}

impl TrainingCode {
    /// Once a job's launcher pod exists, [`REPORTS`] reports of its progress, one after
    /// another, [`REPORTING`] jobs at a time; until `stop`, then until the reports under way
    /// are answered.
    async fn run(self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let code = Arc::new(self);
        let launchers = watcher::Config::default().labels(&format!("{}=launcher", names::JOB_ROLE_LABEL));
        let mut pods = watcher(Api::<Pod>::namespaced(code.admin.clone(), &code.ns), launchers).boxed();
        let (slots, ca) = (Arc::new(Semaphore::new(REPORTING)), Arc::new(OnceCell::new()));
        let mut started = HashSet::new();
        let mut reports = JoinSet::new();
        loop {
            let event = tokio::select! {
                _ = &mut stop => break,
                event = pods.next() => event,
            };
            let Some(event) = event else { break };
            let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
                continue;
            };
            let Some(job) = pod.labels().get(names::TRAINJOB_NAME_LABEL).cloned() else {
                continue;
            };
            if started.insert(job.clone()) {
                let (code, slots, ca) = (code.clone(), slots.clone(), ca.clone());
                reports.spawn(async move {
                    let _slot = slots.acquire().await.expect("slots");
                    let ca = ca
                        .get_or_init(|| progress::job_ca(&code.admin, &code.ns, &job))
                        .await;
                    code.report(&pod, &job, ca).await;
                });
            }
        }
        while let Some(done) = reports.join_next().await {
            done.expect("a job's reports");
        }
    }

    /// `job`'s reports, with a token bound to `pod`, trusting `ca`.
    async fn report(&self, pod: &Pod, job: &str, ca: &str) {
        let token = progress::token(&self.admin, &self.ns, Some(pod), &audience(&self.ns, job)).await;
        for step in 1..=REPORTS {
            let body = json!({"trainerStatus": {
                "progressPercentage": 100 * step / REPORTS,
                "estimatedRemainingSeconds": 60 * (REPORTS - step),
                "metrics": [{"name": "loss", "value": format!("{:.3}", 1.0 / step as f64)}],
                "lastUpdatedTime": trainjob_operator::lifecycle::now(),
            }});
            let t = Instant::now();
            let reply = progress::post(
                self.status_port,
                ca,
                &path(&self.ns, job),
                Some(&token),
                body.to_string().as_bytes(),
            )
            .await;
            let took = t.elapsed();
            self.answers.lock().expect("answers").push((reply.status, took));
        }
    }
}
