//! `make bench`: how fast the operator turns TrainJobs into pods on the local control plane,
//! against a floor measured in the same run (a plain client creating the same objects with no
//! operator), and how fast its pure core is. Writes `docs/development/benchmarks.md` (tables and
//! charts) and `benches/results/`. Asserts nothing about time.
//!
//! `BENCH_SCALE=quick` runs every scenario small, to check the harness in a few minutes.

use trainjob_testbed::support;

mod audit;
mod floor;
mod watch;
mod watched;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use floor::{Floor, IN_FLIGHT};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::{Identity, bench_bed};
use trainjob_operator::api::{ClusterTrainingRuntime, TrainJob, TrainingRuntimeSpec};
use trainjob_operator::desired::{hostfile, pods};
use trainjob_operator::lifecycle::{decide, now};
use trainjob_operator::observed::Observed;
use trainjob_operator::plan::Cluster;
use trainjob_operator::resolve::{Runtime, resolve};
use trainjob_operator::ssh::{KeyAlgorithm, KeyPair};
use trainjob_testbed::bench::{report, section};
use trainjob_testbed::{Bed, Component};

use support::process::{OperatorProcess, metric_sum};
use trainjob_testbed::bench::model::{
    Admission, Baseline, Kept, MemorySample, Percentiles, Report, RoundRatios, Run, Scenario,
};
use watch::{Recorder, Seen};

/// Kwok nodes, and pods each takes: room for a 1000-job burst's 9000 pods at once.
const NODES: u32 = 16;
const PODS_PER_NODE: u32 = 1000;

fn time<T>(micro: &mut BTreeMap<String, f64>, label: &str, iterations: u32, mut f: impl FnMut() -> T) {
    let start = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(f());
    }
    let per = start.elapsed() / iterations;
    println!(
        "{label:<52} {:>12.3} µs/op  ({iterations} runs)",
        per.as_secs_f64() * 1e6
    );
    micro.insert(label.into(), per.as_secs_f64() * 1e6);
}

fn job(name: &str, ns: &str, nodes: u32) -> TrainJob {
    serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"runtimeRef": {"name": "mpi-openmpi"}, "trainer": {"numNodes": nodes}},
    }))
    .expect("job")
}

fn shipped_runtime() -> TrainingRuntimeSpec {
    let path = trainjob_testbed::repo_root().join("config/runtimes/mpi-openmpi.yaml");
    let rt: ClusterTrainingRuntime =
        serde_saphyr::from_str(&std::fs::read_to_string(path).expect("runtime")).expect("yaml");
    rt.spec.0
}

fn micro() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let runtime = Runtime::new("rt", shipped_runtime());
    let cluster = Cluster::default();
    let mut j = job("pi", "bench", 32);
    j.metadata.uid = Some("u".into());
    time(&mut out, "resolve a 32-node job", 2000, || {
        resolve(&j, &runtime, &cluster).expect("plan")
    });
    let plan = resolve(&j, &runtime, &cluster).expect("plan");
    time(&mut out, "build all 33 pods + hostfile + service", 500, || {
        (
            pods::of_jobs(&j, &plan, 0, |_| true),
            hostfile::configmap(&j, &plan),
            pods::service(&j, &plan),
        )
    });
    let running: Vec<_> = pods::of_jobs(&j, &plan, 0, |_| true)
        .into_iter()
        .map(|mut pod| {
            pod.status = Some(
                serde_json::from_value(
                    json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
                )
                .expect("status"),
            );
            std::sync::Arc::new(pod)
        })
        .collect();
    let running = Observed {
        pods: running,
        secret: true,
        ..Observed::default()
    };
    let t = now();
    time(
        &mut out,
        "decide() for a running 32-node job (33 pods)",
        2000,
        || decide(&j, &plan, &running, &t).expect("decision"),
    );
    for (algorithm, n) in [
        (KeyAlgorithm::Ed25519, 200),
        (KeyAlgorithm::EcdsaP256, 200),
        (KeyAlgorithm::EcdsaP384, 50),
        (KeyAlgorithm::Rsa3072, 2),
    ] {
        time(&mut out, &format!("generate an SSH key ({algorithm})"), n, || {
            KeyPair::generate(algorithm, "bench").expect("key")
        });
    }
    out
}

/// Who does a scenario's API work.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Floor,
    /// The floor that also keeps each TrainJob (see `floor`), a labelled extra.
    JobFloor,
    Operator,
}

/// How a scenario's jobs arrive.
#[derive(Clone, Copy)]
enum Arrival {
    /// One at a time, each after the previous one finished.
    Sequential,
    /// All at once (TrainJobs with [`IN_FLIGHT`] creates in flight; the floor all jobs at once
    /// within its own [`IN_FLIGHT`] requests).
    Burst,
}

struct Bench {
    bed: &'static Bed,
    admin: Client,
    operator_identity: Client,
    runtime: TrainingRuntimeSpec,
    memory: Vec<MemorySample>,
    deadline: Duration,
}

/// What a scenario does beyond running its jobs.
#[derive(Clone, Copy, Default)]
struct Options {
    /// Keep the operator's namespace (its finished jobs) afterwards.
    keep: bool,
    /// Sample the operator's memory against jobs in the cluster every second.
    sample_memory: bool,
    /// Jobs already in the cluster that the operator reconciles at start-up, before timing.
    settle: u32,
    /// The operator's `--concurrency`, when not its default.
    concurrency: Option<u16>,
    /// Namespaces the jobs are spread over, one per tenant (job `i` in tenant `i % tenants`);
    /// 0 or 1: one.
    tenants: u32,
    /// People watch: the status server takes every job's progress reports and dashboard
    /// sessions are open on the namespace (see [`watched`]).
    watched: bool,
    /// Also run the floor that keeps each TrainJob (see `floor`).
    job_floor: bool,
    /// Rounds of floor and operator, reported by the round of the median ratio (0 or 1: one).
    rounds: u32,
}

struct Outcome {
    run: Run,
    /// The namespaces the run used, for the caller to keep or delete.
    namespaces: Vec<String>,
}

impl Bench {
    /// Runs `jobs` jobs of `workers` workers through `mode`, returns what it measured.
    async fn run(&mut self, mode: Mode, arrival: Arrival, jobs: u32, workers: u32, opts: Options) -> Outcome {
        let prefix = match mode {
            Mode::Floor => "floor",
            Mode::JobFloor => "job-floor",
            Mode::Operator => "operator",
        };
        let mut namespaces = Vec::new();
        for _ in 0..opts.tenants.max(1) {
            namespaces.push(self.bed.namespace(prefix).await.expect("namespace"));
        }
        let recorder = Recorder::start(&self.admin, &namespaces).await;
        let mark = audit::Mark::now(self.bed.audit_log());
        let status_port = opts.watched.then(support::free_port);
        let operator = match mode {
            Mode::Floor | Mode::JobFloor => None,
            Mode::Operator => Some(self.start_operator(&namespaces[0], opts, status_port).await),
        };
        let watchers = match (mode, status_port) {
            (Mode::Operator, Some(port)) => Some(
                watched::Watchers::start(self.bed, &self.admin, &namespaces[0], port, watched::SESSIONS)
                    .await,
            ),
            _ => None,
        };
        let plain = Floor::new(self.operator_identity.clone(), self.runtime.clone());
        let plain = match mode {
            Mode::JobFloor => plain.keeping_jobs(),
            _ => plain,
        };
        // The floor decides from a watch of its own, as any client that waits for pods must
        // (the operator has its own): the bench's recorder measures both runs and serves neither.
        let floor_view = match mode {
            Mode::Floor | Mode::JobFloor => Some(Recorder::start(&self.operator_identity, &namespaces).await),
            Mode::Operator => None,
        };
        let apiserver0 = self.bed.cpu_seconds(Component::ApiServer);
        let bed0 = self.bed_cpu();
        let watch_events0 = self.watch_events().await;
        let (cpu0, metrics0) = match &operator {
            Some(op) => (op.cpu_s(), op.metrics().await),
            None => (0.0, String::new()),
        };
        let done = move |s: &Seen| match mode {
            Mode::Floor => s.launcher_succeeded.is_some(),
            Mode::JobFloor | Mode::Operator => s.complete.is_some(),
        };
        let t0 = Instant::now();
        let deadline = t0 + self.deadline;
        let tenants = namespaces.len();
        let names: Vec<String> = (0..jobs as usize).map(|i| job_name(i, tenants)).collect();
        let submitted: RefCell<BTreeMap<String, Instant>> = RefCell::default();
        let submit = |name: String| {
            let (admin, plain, floor_view) = (self.admin.clone(), &plain, &floor_view);
            let ns = namespaces[tenant_of(&name)].clone();
            async move {
                let j = job(&name, &ns, workers);
                let at = Instant::now();
                match mode {
                    Mode::Operator => {
                        Api::<TrainJob>::namespaced(admin, &ns)
                            .create(&PostParams::default(), &j)
                            .await
                            .expect("creating a TrainJob");
                    }
                    Mode::Floor | Mode::JobFloor => {
                        let j = match mode {
                            Mode::JobFloor => plain.submit(&admin, &j).await,
                            _ => {
                                let mut j = j;
                                j.metadata.uid = Some(format!("floor-{name}"));
                                j
                            }
                        };
                        let view = floor_view.as_ref().expect("the floor's own watch");
                        plain.run_job(&j, view, deadline).await;
                    }
                }
                (name, at)
            }
        };
        let work = async {
            match arrival {
                Arrival::Sequential => {
                    for name in names.clone() {
                        let (name, at) = submit(name).await;
                        submitted.borrow_mut().insert(name.clone(), at);
                        while !recorder.job(&name).as_ref().is_some_and(done) && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                Arrival::Burst => {
                    let at_once = match mode {
                        Mode::Floor | Mode::JobFloor => names.len(),
                        Mode::Operator => IN_FLIGHT,
                    };
                    let mut stream = futures::stream::iter(names.clone())
                        .map(submit)
                        .buffer_unordered(at_once.max(1));
                    while let Some((name, at)) = stream.next().await {
                        submitted.borrow_mut().insert(name, at);
                    }
                }
            }
            while recorder.count(done) < jobs as usize && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // Alongside: the operator's memory against the jobs it has in its cache, every second.
        let samples = RefCell::new(Vec::new());
        let sampler = async {
            let Some(op) = operator.as_ref().filter(|_| opts.sample_memory) else {
                return std::future::pending().await;
            };
            loop {
                let existing = opts.settle as usize;
                samples.borrow_mut().push(MemorySample {
                    t_s: t0.elapsed().as_secs_f64(),
                    jobs: (existing + submitted.borrow().len()) as u32,
                    finished: (existing + recorder.count(done)) as u32,
                    rss_mib: op.rss_mib(),
                });
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            _ = work => {}
            _ = sampler => {}
        }
        self.memory.extend(samples.into_inner());
        let submitted = submitted.into_inner();
        let seen = recorder.snapshot();
        let mut run = measure(&submitted, &seen, t0, workers as usize, done);
        if let Some(watchers) = watchers {
            run.watched = Some(watchers.finish(&seen).await);
        }
        if tenants > 1 {
            run.tenants = (0..tenants)
                .map(|t| {
                    let theirs = submitted
                        .iter()
                        .filter(|(name, _)| tenant_of(name) == t)
                        .map(|(name, at)| (name.clone(), *at))
                        .collect();
                    measure(&theirs, &seen, t0, workers as usize, done).workers_created
                })
                .collect();
        }
        run.apiserver_cpu_s = self
            .bed
            .cpu_seconds(Component::ApiServer)
            .zip(apiserver0)
            .map(|(after, before)| after - before);
        run.bed_cpu_s = self
            .bed_cpu()
            .into_iter()
            .filter_map(|(part, after)| Some((part.clone(), after - bed0.get(&part)?)))
            .collect();
        run.watch_events_per_job = self
            .watch_events()
            .await
            .zip(watch_events0)
            .map(|(after, before)| (after - before) / f64::from(jobs));
        if mode == Mode::Operator {
            // The workers go after Complete: count those deletes too.
            for ns in &namespaces {
                self.wait_for_cleanup(ns).await;
            }
        }
        let (writes, reads) = mark
            .requests_since(&self.operator_identity, Identity::Operator.user(), &namespaces)
            .await;
        run.writes_per_job = writes.values().sum::<u64>() as f64 / jobs as f64;
        run.writes = writes;
        run.reads = reads;
        if let Arrival::Sequential = arrival {
            run.path = audit::Path::median(&mark.paths(Identity::Operator.user(), &names, workers as usize));
            // BENCH_TRACE: every request of the scenario's last job, for a closer look.
            if let Some(last) = names.last().filter(|_| std::env::var_os("BENCH_TRACE").is_some()) {
                mark.trace(last);
            }
        }
        if let Some(op) = operator {
            let metrics = op.metrics().await;
            let delta = |name: &str| metric_sum(&metrics, name) - metric_sum(&metrics0, name);
            run.peak_rss_mib = Some(op.peak_rss_mib());
            run.cpu_s = Some(op.cpu_s() - cpu0);
            run.reconcile_errors = Some(delta("trainjob_reconcile_errors_total") as u64);
            run.reconciles_per_job =
                Some(delta("trainjob_reconcile_duration_seconds_count") / f64::from(jobs));
            let count = delta("trainjob_pods_created_after_seconds_count");
            if count > 0.0 {
                run.operator_pods_created_mean_ms =
                    Some(delta("trainjob_pods_created_after_seconds_sum") / count * 1000.0);
            }
            op.stop();
        }
        println!(
            "  {prefix:<8} workers created p50 {:>8.1} ms p99 {:>8.1} ms | all workers {:>7.2} s | all done {:>7.2} s | writes/job {:>5.1} | incomplete {}",
            run.workers_created.p50_ms,
            run.workers_created.p99_ms,
            run.all_workers_created_s,
            run.all_complete_s,
            run.writes_per_job,
            run.incomplete
        );
        Outcome { run, namespaces }
    }

    /// CPU seconds so far of the bed's parts other than the API server, by binary.
    fn bed_cpu(&self) -> BTreeMap<String, f64> {
        [
            Component::Etcd,
            Component::Scheduler,
            Component::ControllerManager,
            Component::Kwok,
        ]
        .into_iter()
        .filter_map(|part| Some((part.to_string(), self.bed.cpu_seconds(part)?)))
        .collect()
    }

    /// Watch events the API server has sent so far, to every watcher (its own metric).
    async fn watch_events(&self) -> Option<f64> {
        let request = http::Request::get("/metrics").body(Vec::new()).ok()?;
        let text = self.admin.request_text(request).await.ok()?;
        Some(metric_sum(&text, "apiserver_watch_events_total"))
    }

    /// Starts the operator, serving the status server on `status_port` when given (with the
    /// webhook's server, whose certificate it uses; no webhook configuration calls it); with
    /// `settle` jobs already in the cluster, waits until it has reconciled that many (its
    /// start-up pass), so a scenario times only its own jobs.
    async fn start_operator(&self, ns: &str, opts: Options, status_port: Option<u16>) -> OperatorProcess {
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("operator-{ns}.log"));
        let mut args = vec!["--network-policies".to_string()];
        match status_port {
            Some(port) => args.extend([
                format!("--webhook-addr=127.0.0.1:{}", support::free_port()),
                format!("--status-server-addr=127.0.0.1:{port}"),
            ]),
            None => args.push("--disable-webhook".into()),
        }
        args.extend(opts.concurrency.map(|n| format!("--concurrency={n}")));
        let op = OperatorProcess::start(self.bed, support::free_port(), &args, log).await;
        settle(&op, opts.settle).await;
        op
    }

    /// Waits until the operator has removed every finished job's workers from `ns`.
    async fn wait_for_cleanup(&self, ns: &str) {
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.admin.clone(), ns);
        let workers = kube::api::ListParams::default()
            .labels(&format!("{}=node", trainjob_operator::names::JOB_ROLE_LABEL));
        let deadline = Instant::now() + Duration::from_secs(300);
        while api
            .list(&workers)
            .await
            .map(|l| !l.items.is_empty())
            .unwrap_or(true)
        {
            if Instant::now() > deadline {
                println!("  (workers still present in {ns} after 5 minutes)");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The operator started over `total` TrainJobs: the `finished` ones already there, and
    /// suspended ones created now (no pods: a kwok bed has no room for 10,000 jobs' pods at
    /// once, and a kept job's pods are gone anyway but its launcher); its memory once it has
    /// reconciled them all.
    async fn kept(&self, total: u32, finished: u32) -> Kept {
        println!("== {total} TrainJobs kept");
        let ns = self.bed.namespace("kept").await.expect("namespace");
        let api: Api<TrainJob> = Api::namespaced(self.admin.clone(), &ns);
        let creates = (finished..total).map(|i| {
            let api = api.clone();
            let mut j = job(&format!("kept-{i}"), &ns, 8);
            j.spec.suspend = Some(true);
            async move {
                api.create(&PostParams::default(), &j)
                    .await
                    .expect("creating a kept TrainJob")
            }
        });
        futures::stream::iter(creates)
            .buffer_unordered(IN_FLIGHT)
            .for_each(|_| async {})
            .await;
        let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-kept.log");
        let args = ["--network-policies".to_string(), "--disable-webhook".into()];
        let started = Instant::now();
        let op = OperatorProcess::start(self.bed, support::free_port(), &args, log).await;
        settle(&op, total).await;
        // Then until its reconciles stop for two seconds: the status writes they queue are done.
        let reconciles = |m: &str| metric_sum(m, "trainjob_reconcile_duration_seconds_count");
        let mut last = reconciles(&op.metrics().await);
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = reconciles(&op.metrics().await);
            if now == last {
                break;
            }
            last = now;
        }
        let settle_s = started.elapsed().as_secs_f64();
        let kept = Kept {
            jobs: total,
            finished,
            settle_s,
            rss_mib: op.rss_mib(),
            peak_rss_mib: op.peak_rss_mib(),
        };
        op.stop();
        println!(
            "  settled in {:.1} s, RSS {:.1} MiB (peak {:.1})",
            kept.settle_s, kept.rss_mib, kept.peak_rss_mib
        );
        kept
    }

    /// Deletes a namespace and waits until it is gone, so the next scenario starts quiet.
    async fn delete_namespace(&self, ns: &str) {
        let api: Api<Namespace> = Api::all(self.admin.clone());
        let _ = api.delete(ns, &DeleteParams::background()).await;
        let deadline = Instant::now() + Duration::from_secs(600);
        while api.get_opt(ns).await.ok().flatten().is_some() {
            assert!(
                Instant::now() < deadline,
                "namespace {ns} was not deleted in 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One scenario: the floor, then the operator, in `opts.rounds` rounds; the round whose
    /// every-job-Complete ratio is the median is reported whole, every round's ratios with it.
    /// Each run's namespaces are deleted afterwards, unless `opts.keep` (the last operator run's
    /// finished jobs then stay for the steady state).
    async fn scenario(
        &mut self,
        kind: &str,
        name: &str,
        arrival: Arrival,
        jobs: u32,
        workers: u32,
        opts: Options,
    ) -> Scenario {
        println!("== {name}");
        let plain = Options {
            tenants: opts.tenants,
            ..Options::default()
        };
        let rounds = opts.rounds.max(1);
        let mut runs = Vec::new();
        for round in 0..rounds {
            if rounds > 1 {
                println!("  round {} of {rounds}", round + 1);
            }
            let floor = self
                .run_once(Mode::Floor, arrival, jobs, workers, plain, true)
                .await;
            let job_floor = match opts.job_floor {
                true => Some(
                    self.run_once(Mode::JobFloor, arrival, jobs, workers, plain, true)
                        .await,
                ),
                false => None,
            };
            let clean = !(opts.keep && round + 1 == rounds);
            let operator = self
                .run_once(Mode::Operator, arrival, jobs, workers, opts, clean)
                .await;
            runs.push((floor, job_floor, operator));
        }
        let ratios: Vec<RoundRatios> = runs
            .iter()
            .map(|(floor, job_floor, operator)| RoundRatios::of(floor, job_floor.as_ref(), operator))
            .collect();
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| ratios[a].complete.total_cmp(&ratios[b].complete));
        let (floor, job_floor, operator) = runs.swap_remove(order[order.len() / 2]);
        Scenario {
            kind: kind.into(),
            name: name.into(),
            jobs,
            workers,
            floor,
            job_floor,
            operator,
            rounds: match rounds {
                1 => Vec::new(),
                _ => ratios,
            },
        }
    }

    /// One run of `mode`; its namespaces deleted afterwards when `clean`.
    async fn run_once(
        &mut self,
        mode: Mode,
        arrival: Arrival,
        jobs: u32,
        workers: u32,
        opts: Options,
        clean: bool,
    ) -> Run {
        let outcome = self.run(mode, arrival, jobs, workers, opts).await;
        if clean {
            for ns in &outcome.namespaces {
                self.delete_namespace(ns).await;
            }
        }
        outcome.run
    }
}

/// Rounds of each plain burst (`BENCH_ROUNDS`, default 3): one burst's ratio moves by more than
/// a day's changes between runs on shared cores, the median of three much less.
fn burst_rounds() -> u32 {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// One scenario to run: its part (the `BENCH_ONLY` name), kind (its report section), name,
/// arrival, size and options.
struct Planned {
    part: &'static str,
    kind: &'static str,
    name: String,
    arrival: Arrival,
    jobs: u32,
    workers: u32,
    opts: Options,
}

/// The scenarios, in the order they run: `lone` jobs one after another, the `bursts`, the
/// largest of them again `watched`, one job of each of the `widths`, tenants
/// (TC-SCALE-003/004), the `--concurrency` choices, the `big` burst whose finished jobs stay,
/// and the steady state over those `finished` jobs.
fn plan(lone: u32, bursts: &[u32], widths: &[u32], big: u32, finished: u32) -> Vec<Planned> {
    let job = |part, name: String, arrival, jobs, workers, opts| Planned {
        part,
        // The big and watched bursts are bursts in the report; their own parts only to run
        // them alone.
        kind: if matches!(part, "big" | "watched") {
            "burst"
        } else {
            part
        },
        name,
        arrival,
        jobs,
        workers,
        opts,
    };
    let mut plan = vec![job(
        "lone",
        format!("{lone} jobs one after another × 8 workers"),
        Arrival::Sequential,
        lone,
        8,
        Options::default(),
    )];
    for &n in bursts {
        let name = format!("burst of {n} jobs × 8 workers");
        let opts = Options {
            job_floor: true,
            rounds: burst_rounds(),
            ..Options::default()
        };
        plan.push(job("burst", name, Arrival::Burst, n, 8, opts));
    }
    if let Some(&n) = bursts.last() {
        let name = format!(
            "burst of {n} jobs × 8 workers, watched: progress reports, {} dashboard sessions",
            watched::SESSIONS
        );
        let opts = Options {
            watched: true,
            ..Options::default()
        };
        plan.push(job("watched", name, Arrival::Burst, n, 8, opts));
    }
    for &w in widths {
        let name = format!("one job × {w} workers");
        plan.push(job("width", name, Arrival::Sequential, 1, w, Options::default()));
    }
    // Jobs from several teams at once, each team its own namespace.
    let tenants = 5;
    for n in [10, 20, 50] {
        let name = format!("burst of {n} jobs × 8 workers from {tenants} tenants");
        let opts = Options {
            tenants,
            ..Options::default()
        };
        plan.push(job("tenants", name, Arrival::Burst, n, 8, opts));
    }
    // The default --concurrency, chosen from these.
    let n = bursts.first().copied().unwrap_or(100);
    for c in [4, 8, 16, 32] {
        let name = format!("burst of {n} jobs × 8 workers, --concurrency {c}");
        let opts = Options {
            concurrency: Some(c),
            ..Options::default()
        };
        plan.push(job("concurrency", name, Arrival::Burst, n, 8, opts));
    }
    // The big burst's finished jobs stay for the steady state and the kept ones.
    let opts = Options {
        keep: true,
        sample_memory: true,
        ..Options::default()
    };
    let name = format!("burst of {big} jobs × 8 workers");
    plan.push(job("big", name, Arrival::Burst, big, 8, opts));
    let opts = Options {
        sample_memory: true,
        settle: finished,
        ..Options::default()
    };
    let name = format!("{lone} jobs one after another, {finished} finished jobs kept");
    plan.push(job("steady", name, Arrival::Sequential, lone, 8, opts));
    plan
}

/// Job `i`'s name among `tenants` tenants: `job-i`, or `tK-job-i` in tenant `K = i % tenants`.
fn job_name(i: usize, tenants: usize) -> String {
    match tenants {
        0 | 1 => format!("job-{i}"),
        _ => format!("t{}-job-{i}", i % tenants),
    }
}

/// The tenant a job's name says (see [`job_name`]); 0 without one.
fn tenant_of(name: &str) -> usize {
    name.strip_prefix('t')
        .and_then(|rest| rest.split_once("-job-"))
        .and_then(|(t, _)| t.parse().ok())
        .unwrap_or(0)
}

/// Latencies from each job's submission, and the scenario's makespans from its start.
fn measure(
    submitted: &BTreeMap<String, Instant>,
    seen: &std::collections::HashMap<String, Seen>,
    t0: Instant,
    workers: usize,
    done: impl Fn(&Seen) -> bool,
) -> Run {
    let (mut w, mut l, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ready, mut ready_to_launcher) = (Vec::new(), Vec::new());
    let (mut succeeded, mut reaction) = (Vec::new(), Vec::new());
    let (mut last_worker, mut last_done) = (Duration::ZERO, Duration::ZERO);
    let mut incomplete = 0;
    for (name, at) in submitted {
        let Some(s) = seen.get(name) else {
            incomplete += 1;
            continue;
        };
        if let Some(t) = s.workers_created(workers) {
            w.push(t.saturating_duration_since(*at));
            last_worker = last_worker.max(t.saturating_duration_since(t0));
        }
        let all_ready = (s.workers_ready.len() >= workers)
            .then(|| s.workers_ready.values().max().copied())
            .flatten();
        if let Some(t) = all_ready {
            ready.push(t.saturating_duration_since(*at));
        }
        if let Some(t) = s.launcher {
            l.push(t.saturating_duration_since(*at));
            ready_to_launcher.extend(all_ready.map(|r| t.saturating_duration_since(r)));
        }
        if let Some(t) = s.launcher_succeeded {
            succeeded.push(t.saturating_duration_since(*at));
            reaction.extend(s.complete.map(|c| c.saturating_duration_since(t)));
        }
        let finished = if done(s) {
            s.complete.or(s.launcher_succeeded)
        } else {
            None
        };
        match finished {
            Some(t) => {
                c.push(t.saturating_duration_since(*at));
                last_done = last_done.max(t.saturating_duration_since(t0));
            }
            None => incomplete += 1,
        }
    }
    Run {
        workers_created: Percentiles::of(&w),
        workers_ready: Percentiles::of(&ready),
        launcher_created: Percentiles::of(&l),
        ready_to_launcher: Percentiles::of(&ready_to_launcher),
        launcher_succeeded: Percentiles::of(&succeeded),
        complete: Percentiles::of(&c),
        succeeded_to_complete: Percentiles::of(&reaction),
        all_workers_created_s: last_worker.as_secs_f64(),
        all_complete_s: last_done.as_secs_f64(),
        incomplete,
        ..Default::default()
    }
}

/// Waits until the operator has reconciled `jobs` jobs (its start-up pass over those there).
async fn settle(op: &OperatorProcess, jobs: u32) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while metric_sum(&op.metrics().await, "trainjob_reconcile_duration_seconds_count") < f64::from(jobs) {
        assert!(
            Instant::now() < deadline,
            "the operator did not reconcile the {jobs} existing jobs in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sequential TrainJob creates (suspended, so nothing else runs) in a fresh namespace: the time
/// each create takes.
async fn creates(bed: &Bed, admin: &Client, count: u32) -> Vec<Duration> {
    let ns = bed.namespace("admit").await.expect("namespace");
    let api: Api<TrainJob> = Api::namespaced(admin.clone(), &ns);
    let mut took = Vec::new();
    for i in 0..count {
        let mut j = job(&format!("job-{i}"), &ns, 4);
        j.spec.suspend = Some(true);
        let start = Instant::now();
        api.create(&PostParams::default(), &j).await.expect("create");
        took.push(start.elapsed());
    }
    took
}

/// What admission adds to a create: the same creates without the webhook (the floor), then with
/// the shipped webhook configurations calling the operator (runtime lookup, rules, audit line).
async fn admission(bed: &'static Bed, admin: &Client, count: u32, existing: u32) -> Admission {
    println!("== admission: {count} creates");
    let floor = Percentiles::of(&creates(bed, admin, count).await);
    let port = support::free_port();
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-admission.log");
    let args = [
        format!("--webhook-addr=127.0.0.1:{port}"),
        "--status-server-addr=127.0.0.1:0".into(),
        "--webhook-hosts=127.0.0.1".into(),
    ];
    // Registered first: the operator puts its CA into the configurations as it starts.
    bed.register_operator_webhooks(port)
        .await
        .expect("registering the webhooks");
    let operator = OperatorProcess::start(bed, support::free_port(), &args, log).await;
    support::wait_for_admission().await;
    // Its start-up pass over the jobs already there would be timed too.
    settle(&operator, existing).await;
    let webhook = Percentiles::of(&creates(bed, admin, count).await);
    operator.stop();
    println!(
        "  create p50 {:.1} ms without the webhook, {:.1} ms with it",
        floor.p50_ms, webhook.p50_ms
    );
    Admission {
        creates: count,
        floor,
        webhook,
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> BTreeMap<String, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    BTreeMap::from([
        ("cpu".into(), model),
        (
            "cores".into(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
                .to_string(),
        ),
        ("memory".into(), memory),
        ("kernel".into(), command_line("uname", &["-r"])),
    ])
}

async fn versions(admin: &Client) -> BTreeMap<String, String> {
    let bin = trainjob_testbed::default_bin_dir().expect("bin dir");
    BTreeMap::from([
        (
            "operator".into(),
            // BENCH_OPERATOR names another build than this checkout's (TRAINJOB_OPERATOR_BINARY).
            std::env::var("BENCH_OPERATOR").unwrap_or_else(|_| {
                format!(
                    "{} ({})",
                    env!("CARGO_PKG_VERSION"),
                    command_line("git", &["rev-parse", "--short", "HEAD"])
                )
            }),
        ),
        (
            "kubernetes".into(),
            admin
                .apiserver_version()
                .await
                .map(|v| v.git_version)
                .unwrap_or_default(),
        ),
        (
            "kwok".into(),
            command_line(&bin.join("kwok").display().to_string(), &["--version"]),
        ),
        ("rustc".into(), command_line("rustc", &["--version"])),
    ])
}

fn write_outputs(report: &Report, results: &Path, in_repo: bool) {
    std::fs::create_dir_all(results).expect("results dir");
    let json = serde_json::to_string_pretty(report).expect("json");
    std::fs::write(results.join("BENCHMARKS.json"), json).expect("writing BENCHMARKS.json");
    let charts = report::charts(report, results).expect("drawing the charts");
    // The report lives in docs/development/, the charts next to the JSON: its image links climb
    // back to the repository root from there.
    let (md_path, prefix) = if in_repo {
        (
            trainjob_testbed::repo_root().join("docs/development/benchmarks.md"),
            "../../benches/results/",
        )
    } else {
        (results.join("BENCHMARKS.md"), "")
    };
    let charts: Vec<(String, String)> = charts
        .into_iter()
        .map(|(title, file)| (title, format!("{prefix}{file}")))
        .collect();
    let old = std::fs::read_to_string(&md_path).unwrap_or_default();
    let md = section::keep(&old, report::markdown(report, &charts));
    std::fs::write(md_path, md).expect("writing docs/development/benchmarks.md");
}

/// A run's `BENCHMARKS.json`.
fn read_report(path: &Path) -> Report {
    let json = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{}: not a BENCHMARKS.json: {e}", path.display()))
}

fn main() {
    // BENCH_RENDER: the report written again from the last run's JSON, running nothing (after a
    // change to how it is written).
    if std::env::var_os("BENCH_RENDER").is_some() {
        let results = trainjob_testbed::repo_root().join("benches/results");
        write_outputs(&read_report(&results.join("BENCHMARKS.json")), &results, true);
        println!("wrote docs/development/benchmarks.md and its charts again");
        return;
    }
    let quick = std::env::var("BENCH_SCALE").is_ok_and(|s| s == "quick");
    println!("== pure core (no server) ==");
    let micro = micro();
    // BENCH_OUT: somewhere else than the repository (the Markdown report included), e.g. to compare.
    let out = std::env::var_os("BENCH_OUT").map(PathBuf::from);
    let results = out
        .clone()
        .unwrap_or_else(|| trainjob_testbed::repo_root().join("benches/results"));
    std::fs::create_dir_all(&results).expect("results dir");
    let bed = bench_bed(NODES, PODS_PER_NODE);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let admin = bed.client(Identity::Admin).await.expect("admin client");
        let mut bench = Bench {
            bed,
            operator_identity: bed.client(Identity::Operator).await.expect("operator client"),
            runtime: shipped_runtime(),
            memory: Vec::new(),
            deadline: Duration::from_secs(if quick { 120 } else { 900 }),
            admin: admin.clone(),
        };
        let mut report = Report {
            date: now().0.to_string(),
            machine: machine(),
            versions: versions(&admin).await,
            nodes: NODES,
            pods_per_node: PODS_PER_NODE,
            operator_settings: BTreeMap::from([
                ("--concurrency".into(), "32 (default)".into()),
                ("--network-policies".into(), "on (as config/default)".into()),
                (
                    "admission webhook".into(),
                    "off (the floor has none either)".into(),
                ),
            ]),
            micro,
            ..Default::default()
        };
        let (lone, bursts, widths, big, kept): (u32, &[u32], &[u32], u32, u32) = if quick {
            (3, &[10], &[2, 8, 32], 50, 200)
        } else {
            (20, &[100, 500], &[2, 8, 32, 128, 512, 4095], 1000, 10_000)
        };
        // BENCH_ONLY=lone,burst,...: those parts only (to compare one change quickly).
        let only = std::env::var("BENCH_ONLY").ok();
        let wanted = |part: &str| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|p| p.trim() == part))
        };
        let finished = if wanted("big") { big } else { 0 };
        let plan = plan(lone, bursts, widths, big, finished);
        for p in plan.into_iter().filter(|p| wanted(p.part)) {
            let s = bench
                .scenario(p.kind, &p.name, p.arrival, p.jobs, p.workers, p.opts)
                .await;
            report.scenarios.push(s);
        }
        report.memory = std::mem::take(&mut bench.memory);
        if wanted("kept") {
            report.kept = Some(bench.kept(kept, finished).await);
        }
        // Last: the webhook stays registered once it is.
        if wanted("admission") {
            let existing = if wanted("kept") { kept } else { finished };
            report.admission = Some(admission(bed, &admin, if quick { 20 } else { 200 }, existing).await);
        }
        // BENCH_BEFORE: an earlier run's BENCHMARKS.json, to compare with.
        if let Some(path) = std::env::var_os("BENCH_BEFORE") {
            let before = read_report(Path::new(&path));
            report.before = Some(Baseline {
                operator: before.versions.get("operator").cloned().unwrap_or_default(),
                date: before.date,
                scenarios: before.scenarios,
                kept: before.kept,
            });
        }
        write_outputs(&report, &results, out.is_none());
        println!("wrote docs/development/benchmarks.md and {}", results.display());
    });
}
