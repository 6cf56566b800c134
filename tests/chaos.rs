//! Chaos on the kwok bed: 200 TrainJobs of 1 to 32 workers, each with a fate (complete, a
//! worker OOM-killed, a worker evicted, one gang restart, deleted, suspended and resumed), run
//! by replicas with leader election while the leader is killed or stopped every few seconds and
//! replaced, and kube-apiserver and etcd are each restarted once. Afterwards the invariants
//! (`chaos/invariants.rs`), read from the test's own watch recording, listings and the API
//! server's audit log:
//! - every surviving job ends Complete or Failed, as its fate says, with a reason that names
//!   what was injected; `status.restarts` equals the gang restarts the recording saw. At most
//!   [`EXCUSED_MAX`] jobs may fail otherwise for a cause the audit log pins outside the operator
//!   (a stray kwok delete, a Secret deleted by someone else), each printed with its evidence;
//! - no pod slot (job, replicated job, index) was ever filled twice at once;
//! - no SSH key changed during its job's life;
//! - nothing the operator made is left without a live owner;
//! - no live replica's `trainjob_jobs_active` gauge still counts a job;
//! - never two leaders at once, by the leader Lease's history and every replica's writes in the
//!   audit log (`support::leaders`): takeovers only after the lease ran out, and each replica
//!   wrote only while it held the Lease; and nothing panicked.
//!
//! Then the invariants are broken on purpose, live, to show that the checks can fail.
//!
//! `CHAOS_SEED` (default 13) draws the run, and the test prints its draw: each job's size (1, 2,
//! 4, 8, 16 or 32 workers); each job's fate, a shuffle of fixed shares ([`FATES`]: 10% each
//! OOM-killed, evicted, deleted, suspended and resumed, restarted once; 50% complete); when
//! kube-apiserver restarts ([`APISERVER_AT`] after the start) and etcd ([`ETCD_AFTER`] after
//! kube-apiserver is back); and the pause before each leader kill or stop ([`PAUSE`]). Kills and
//! graceful stops alternate. What the seed cannot fix is the machine's timing: which pods exist
//! at each disruption.

#[path = "chaos/invariants.rs"]
mod invariants;
use trainjob_testbed::support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use invariants::{Recorder, orphans, secret_deleted_by_others, stray_kwok_deletes};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::jobs::{EXIT, HOLD, pod_meta, runtime};
use support::leaders::{Leadership, leads};
use support::{Identity, Operator, TestNs, big_bed, client, eventually};
use trainjob_operator::api::TrainJob;
use trainjob_operator::leader::Timing;
use trainjob_testbed::Component;

const JOBS: usize = 200;
const SIZES: [i32; 6] = [1, 2, 4, 8, 16, 32];
/// Each fate's share of the jobs, in percent.
const FATES: [(Fate, usize); 6] = [
    (Fate::Oom, 10),
    (Fate::Evict, 10),
    (Fate::Delete, 10),
    (Fate::SuspendResume, 10),
    (Fate::Restart, 10),
    (Fate::Complete, 50),
];
/// When kube-apiserver restarts, in seconds after the start: while jobs are still being created.
const APISERVER_AT: std::ops::Range<u64> = 8..25;
/// When etcd restarts, in seconds after kube-apiserver is back.
const ETCD_AFTER: std::ops::Range<u64> = 8..25;
/// The pause before each leader kill or stop, in milliseconds: long enough for a new leader
/// to take over and reconcile (the lease is 3 s), short enough for dozens of handovers.
const PAUSE: std::ops::Range<u64> = 2000..6000;
const MANAGED: &str = "app.kubernetes.io/managed-by=trainjob-operator";
/// How long nothing may change while jobs are open.
const STALL: Duration = Duration::from_secs(180);
/// How long the whole run may take.
const LIMIT: Duration = Duration::from_secs(1200);
/// Jobs that may fail for a cause outside the operator, all kinds together: one now and then is
/// kwok's or the garbage collector's bad luck, more is a pattern to look into.
const EXCUSED_MAX: usize = 3;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// What the test does to a job, and so how it must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Complete,
    /// A worker fails once; the runtime allows one gang restart; then it completes.
    Restart,
    /// A worker is OOM-killed (exit 137); no restarts: Failed.
    Oom,
    /// A worker is evicted: Failed.
    Evict,
    /// The TrainJob is deleted while it runs.
    Delete,
    /// Suspended while it runs, resumed once its pods are gone; then it completes.
    SuspendResume,
}

struct Job {
    name: String,
    workers: i32,
    fate: Fate,
    /// Steps of the fate done so far.
    step: u8,
}

/// What `CHAOS_SEED` decides.
struct Draw {
    jobs: Vec<Job>,
    /// When kube-apiserver restarts, after the start.
    apiserver: Duration,
    /// When etcd restarts, after kube-apiserver is back.
    etcd: Duration,
    /// The pauses before the leader kills and stops, in turn (more than a run can use).
    pauses: Vec<Duration>,
}

fn draw(seed: u64) -> Draw {
    let mut rng = StdRng::seed_from_u64(seed);
    let sizes: Vec<i32> = (0..JOBS).map(|_| SIZES[rng.gen_range(0..SIZES.len())]).collect();
    let mut fates: Vec<Fate> = FATES
        .iter()
        .flat_map(|&(fate, percent)| std::iter::repeat_n(fate, JOBS * percent / 100))
        .collect();
    assert_eq!(fates.len(), JOBS, "the shares in FATES add up to 100%");
    fates.shuffle(&mut rng);
    let jobs = sizes
        .into_iter()
        .zip(fates)
        .enumerate()
        .map(|(i, (workers, fate))| Job {
            name: format!("j{i:03}"),
            workers,
            fate,
            step: 0,
        })
        .collect();
    let apiserver = Duration::from_secs(rng.gen_range(APISERVER_AT));
    let etcd = Duration::from_secs(rng.gen_range(ETCD_AFTER));
    let most = LIMIT.as_millis() as u64 / PAUSE.start + 1;
    let pauses = (0..most)
        .map(|_| Duration::from_millis(rng.gen_range(PAUSE)))
        .collect();
    Draw {
        jobs,
        apiserver,
        etcd,
        pauses,
    }
}

impl std::fmt::Display for Draw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first: Vec<String> = self.pauses.iter().take(12).map(|p| format!("{p:?}")).collect();
        writeln!(
            f,
            "kube-apiserver restarts {:?} in, etcd {:?} after that; leader disruptions after pauses of {} ...",
            self.apiserver,
            self.etcd,
            first.join(", ")
        )?;
        let jobs: Vec<String> = self
            .jobs
            .iter()
            .map(|j| format!("{}:{}x{:?}", j.name, j.workers, j.fate))
            .collect();
        write!(f, "jobs (name:workers x fate): {}", jobs.join(" "))
    }
}

#[test]
fn a_seed_draws_one_run_with_the_fates_in_their_shares() {
    let (a, again, other) = (draw(13), draw(13), draw(14));
    assert_eq!(a.to_string(), again.to_string(), "the same seed, the same run");
    assert_ne!(a.to_string(), other.to_string(), "another seed, another run");
    for d in [&a, &other] {
        for (fate, percent) in FATES {
            let n = d.jobs.iter().filter(|j| j.fate == fate).count();
            assert_eq!(n, JOBS * percent / 100, "{fate:?}");
        }
        assert!(APISERVER_AT.contains(&d.apiserver.as_secs()) && ETCD_AFTER.contains(&d.etcd.as_secs()));
        assert!(d.pauses.iter().all(|p| PAUSE.contains(&(p.as_millis() as u64))));
        assert!(
            d.pauses.iter().sum::<Duration>() > LIMIT,
            "pauses for a whole run"
        );
    }
    let fates = |d: &Draw| d.jobs.iter().map(|j| j.fate).collect::<Vec<_>>();
    assert_ne!(fates(&a), fates(&other), "the seed shuffles the fates");
}

fn running(pod: Option<&Pod>) -> bool {
    pod.and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref())
        == Some("Running")
        && pod.is_some_and(|p| p.metadata.deletion_timestamp.is_none())
}

/// The pause before a leader disruption when none was drawn.
const PAUSE_DEFAULT: Duration = Duration::from_secs(4);

/// How long a fake pod may sit where kwok should move it on before the test nudges it.
const KWOK_RETRY: Duration = Duration::from_secs(20);

/// Whether kwok (`hack/kwok/stages.yaml`) owes `pod` a next step: bound but Pending, told to
/// exit, a launcher let go, or deleted but still there.
fn kwok_owes(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let annotations = pod.annotations();
    let launcher = pod
        .labels()
        .get("trainer.kubeflow.org/job-role")
        .map(String::as_str)
        == Some("launcher");
    pod.metadata.deletion_timestamp.is_some()
        || (bound && phase == Some("Pending"))
        || (phase == Some("Running")
            && (annotations.contains_key(EXIT) || (launcher && !annotations.contains_key(HOLD))))
}

/// kwok plays a pod's next stage once, on the event that makes it due, and drops it when the
/// API server refuses the write (as while etcd restarts): the fake pod then stays where it is
/// for good, where a kubelet would retry until its status lands. So a pod kwok has owed a step
/// for [`KWOK_RETRY`] gets an annotation touched, an event on which kwok tries again.
async fn nudge(
    api: &Api<Pod>,
    pods: &BTreeMap<String, Pod>,
    owed: &mut BTreeMap<String, (String, Instant)>,
) -> usize {
    let due: BTreeMap<String, String> = pods
        .values()
        .filter(|p| kwok_owes(p))
        .map(|p| (p.name_any(), p.resource_version().unwrap_or_default()))
        .collect();
    owed.retain(|name, _| due.contains_key(name));
    let mut nudged = 0;
    for (name, version) in due {
        let since = owed
            .entry(name.clone())
            .or_insert((version.clone(), Instant::now()));
        if since.0 != version {
            *since = (version, Instant::now());
        } else if since.1.elapsed() > KWOK_RETRY {
            let patch = json!({"metadata": {"annotations": {"chaos.trainjob.test/nudged": format!("{:?}", Instant::now())}}});
            if api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .is_ok()
            {
                nudged += 1;
            }
            owed.remove(&name);
        }
    }
    nudged
}

fn attempt(pod: &Pod) -> &str {
    pod.labels()
        .get("trainer.kubeflow.org/restart-attempt")
        .map_or("0", String::as_str)
}

/// One step of `job`'s fate, when its pods allow it; errors are retried on the next pass.
async fn act(c: &Client, ns: &str, job: &mut Job, pods: &BTreeMap<String, Pod>) -> Result<(), kube::Error> {
    let launcher = pods.get(&format!("{}-launcher-0-0", job.name));
    let worker_name = format!("{}-node-0-0", job.name);
    let worker = pods.get(&worker_name);
    let pod_api: Api<Pod> = Api::namespaced(c.clone(), ns);
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), ns);
    let annotate = |name: String, key: &str, value: Option<&str>| {
        let api = pod_api.clone();
        let patch = json!({"metadata": {"annotations": {key: value}}});
        async move {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| ())
        }
    };
    let release = || annotate(format!("{}-launcher-0-0", job.name), HOLD, None);
    match (job.fate, job.step) {
        (Fate::Complete, 0) if running(launcher) => release().await?,
        (Fate::Oom, 0) if running(launcher) => {
            annotate(
                worker_name.clone(),
                "kwok.trainjob.test/reason",
                Some("OOMKilled"),
            )
            .await?;
            annotate(worker_name, EXIT, Some("137")).await?;
        }
        (Fate::Evict, 0) if running(launcher) && running(worker) => {
            pod_api.evict(&worker_name, &EvictParams::default()).await?;
        }
        (Fate::Delete, 0) if launcher.is_some() => {
            jobs.delete(&job.name, &DeleteParams::default()).await?;
        }
        (Fate::Restart, 0) if running(launcher) && worker.is_some_and(|w| attempt(w) == "0") => {
            annotate(worker_name, EXIT, Some("1")).await?;
        }
        (Fate::Restart, 1) if running(launcher) && launcher.is_some_and(|l| attempt(l) == "1") => {
            release().await?
        }
        (Fate::SuspendResume, 0) if running(launcher) => {
            let patch = Patch::Merge(json!({"spec": {"suspend": true}}));
            jobs.patch(&job.name, &PatchParams::default(), &patch).await?;
        }
        (Fate::SuspendResume, 1) if pods.keys().all(|p| !p.starts_with(&format!("{}-", job.name))) => {
            let patch = Patch::Merge(json!({"spec": {"suspend": false}}));
            jobs.patch(&job.name, &PatchParams::default(), &patch).await?;
        }
        (Fate::SuspendResume, 2) if running(launcher) => release().await?,
        _ => return Ok(()),
    }
    job.step += 1;
    Ok(())
}

/// Whether the job reached its end: finished, or (deleted) gone.
fn settled(job: &Job, found: Option<&TrainJob>) -> bool {
    match found {
        None => job.fate == Fate::Delete && job.step > 0,
        Some(tj) => tj.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        }),
    }
}

/// Kills or stops the leader after each of `pauses` and starts a replacement, until `done`. A
/// replica that ended on its own (it lost the Lease, say while the API server was away) is
/// replaced as well, as Kubernetes restarts the container.
async fn disrupt(
    replicas: &Mutex<Vec<(String, Operator)>>,
    pauses: &[Duration],
    timing: &Timing,
    done: &AtomicBool,
) -> (usize, usize) {
    let (mut handovers, mut restarts) = (0, 0);
    let mut started = 0;
    let mut replace = |gone: (String, Operator), crash: bool| {
        started += 1;
        let name = format!("replica-{started}");
        let op = Operator::start_elected(&name, timing.clone());
        replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, op));
        tokio::task::spawn_blocking(move || if crash { gone.1.kill() } else { gone.1.stop() })
    };
    let mut pauses = pauses.iter().cycle();
    while !done.load(Ordering::Relaxed) {
        // The chaos's own rhythm, drawn by the seed; nothing waits on it.
        tokio::time::sleep(*pauses.next().unwrap_or(&PAUSE_DEFAULT)).await;
        let (leader, exited) = {
            let mut replicas = replicas.lock().unwrap_or_else(|e| e.into_inner());
            let exited: Vec<_> = replicas.extract_if(.., |(_, op)| op.exited()).collect();
            let at = replicas.iter().position(|(_, op)| leads(op));
            (at.map(|i| replicas.remove(i)), exited)
        };
        for gone in exited {
            restarts += 1;
            let _ = replace(gone, false).await;
        }
        if let Some(leader) = leader {
            // Every other time a crash, else a graceful stop that hands the Lease over.
            let crash = handovers % 2 == 0;
            handovers += 1;
            let _ = replace(leader, crash).await;
        }
    }
    (handovers, restarts)
}

#[tokio::test]
async fn two_hundred_jobs_through_leader_kills_and_control_plane_restarts_keep_every_invariant() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let bed = big_bed();
    let _post_mortem = PostMortem(bed);
    let ns = TestNs::new("chaos").await;
    let c = client(Identity::Admin).await;
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13);
    let mut draw = draw(seed);
    eprintln!("chaos seed {seed} (CHAOS_SEED replays another draw) draws:\n{draw}");
    let hold = |rt: &mut serde_json::Value| {
        pod_meta(rt, "launcher")["annotations"][HOLD] = json!("true");
    };
    runtime(&c, &ns.name, "mpi-openmpi", "chaos", hold).await;
    runtime(&c, &ns.name, "mpi-openmpi", "chaos-restart", |rt| {
        hold(rt);
        rt["template"]["spec"]["failurePolicy"] = json!({"maxRestarts": 1});
    })
    .await;

    // The recording: every pod and Secret event the test's own watches see.
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let managed = watcher::Config::default().labels(MANAGED);
    let r = recorder.clone();
    let pods = watcher(Api::<Pod>::namespaced(c.clone(), &ns.name), managed.clone())
        .default_backoff()
        .for_each(move |e| {
            if let Ok(e) = e {
                r.lock().unwrap_or_else(|e| e.into_inner()).pod(&e);
            }
            async {}
        });
    let r = recorder.clone();
    let secrets = watcher(Api::<Secret>::namespaced(c.clone(), &ns.name), managed)
        .default_backoff()
        .for_each(move |e| {
            if let Ok(e) = e {
                r.lock().unwrap_or_else(|e| e.into_inner()).secret(&e);
            }
            async {}
        });
    tokio::spawn(pods);
    tokio::spawn(secrets);

    let timing = Timing {
        lease: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry: Duration::from_millis(500),
    };
    let replicas = Mutex::new(Vec::new());
    for name in ["replica-a", "replica-b"] {
        let op = Operator::start_elected(name, timing.clone());
        replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), op));
    }

    let plan = &mut draw.jobs;
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), &ns.name);
    let specs: Vec<(String, i32, Fate)> = plan.iter().map(|j| (j.name.clone(), j.workers, j.fate)).collect();
    let create = async {
        for (name, workers, fate) in &specs {
            let rt = if *fate == Fate::Restart {
                "chaos-restart"
            } else {
                "chaos"
            };
            let tj: TrainJob = serde_json::from_value(json!({
                "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                "metadata": {"name": name, "namespace": ns.name},
                "spec": {"runtimeRef": {"kind": "TrainingRuntime", "name": rt},
                         "trainer": {"numNodes": workers}},
            }))
            .expect("job");
            // The API server may be restarting: try until it is created (or was, before).
            loop {
                match jobs.create(&PostParams::default(), &tj).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (apiserver_at, etcd_after) = (draw.apiserver, draw.etcd);
    let control_plane = async {
        // The moments the seed drew; nothing waits on them.
        tokio::time::sleep(apiserver_at).await;
        bed.restart(Component::ApiServer)
            .await
            .expect("restart kube-apiserver");
        eprintln!("restarted kube-apiserver at {:?}", started.elapsed());
        tokio::time::sleep(etcd_after).await;
        bed.restart(Component::Etcd).await.expect("restart etcd");
        eprintln!("restarted etcd at {:?}", started.elapsed());
    };
    let fates = async {
        // Slow is fine (a loaded machine, a control-plane restart); stuck is not: some job
        // must settle or take a step, or some pod come or go, within STALL of the last change.
        let mut seen = (0, 0, 0);
        let mut changed = Instant::now();
        let mut owed = BTreeMap::new();
        let mut nudges = 0;
        let pod_api: Api<Pod> = Api::namespaced(c.clone(), &ns.name);
        loop {
            let listed = futures::future::join(
                Api::<Pod>::namespaced(c.clone(), &ns.name).list(&ListParams::default().labels(MANAGED)),
                jobs.list(&ListParams::default()),
            )
            .await;
            if let (Ok(pods), Ok(found)) = listed {
                let pods: BTreeMap<String, Pod> = pods.items.into_iter().map(|p| (p.name_any(), p)).collect();
                let found: BTreeMap<String, TrainJob> =
                    found.items.into_iter().map(|j| (j.name_any(), j)).collect();
                let mut open = Vec::new();
                for job in plan.iter_mut() {
                    if !settled(job, found.get(&job.name)) {
                        let status = found.get(&job.name).and_then(|j| j.status.as_ref()).map(|s| {
                            let conds: Vec<_> = s
                                .conditions
                                .iter()
                                .map(|c| (&c.type_, &c.status, &c.reason))
                                .collect();
                            format!("{conds:?} restarts {:?}", s.restarts)
                        });
                        open.push(format!(
                            "{} {:?} step {} {status:?}",
                            job.name, job.fate, job.step
                        ));
                        let _ = act(&c, &ns.name, job, &pods).await;
                    }
                }
                if open.is_empty() {
                    break;
                }
                nudges += nudge(&pod_api, &pods, &mut owed).await;
                let now = (open.len(), plan.iter().map(|j| j.step as usize).sum(), pods.len());
                if now != seen {
                    (seen, changed) = (now, Instant::now());
                }
                assert!(
                    changed.elapsed() < STALL && started.elapsed() < LIMIT,
                    "{} jobs still open, nothing moved for {:?} ({:?} in all): {open:#?}",
                    open.len(),
                    changed.elapsed(),
                    started.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        done.store(true, Ordering::Relaxed);
        nudges
    };
    let ((), (), nudges, (handovers, restarts)) = tokio::join!(
        create,
        control_plane,
        fates,
        disrupt(&replicas, &draw.pauses, &timing, &done)
    );
    let elapsed = started.elapsed();

    // Outcomes, and restarts against the recording.
    let found: BTreeMap<String, TrainJob> = jobs
        .list(&ListParams::default())
        .await
        .expect("jobs")
        .items
        .into_iter()
        .map(|j| (j.name_any(), j))
        .collect();
    let audit = std::fs::read_to_string(bed.audit_log()).expect("the audit log");
    let mut wrong = Vec::new();
    // Jobs failed for a cause outside the operator, each with the audit log's evidence.
    let mut excused = Vec::new();
    for job in plan.iter() {
        let Some(tj) = found.get(&job.name) else {
            if job.fate != Fate::Delete {
                wrong.push(format!("{} ({:?}) is gone", job.name, job.fate));
            }
            continue;
        };
        let status = tj.status.clone().unwrap_or_default();
        let ended = status
            .conditions
            .iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
        let worker = format!("{}-node-0-0", job.name);
        let ok = match (job.fate, ended) {
            (Fate::Complete | Fate::SuspendResume, Some(c)) => c.type_ == "Complete",
            (Fate::Restart, Some(c)) => c.type_ == "Complete",
            (Fate::Oom, Some(c)) => {
                c.type_ == "Failed"
                    && c.reason == "FailedJobs"
                    && c.message.contains(&format!(
                        "pod {worker} failed: container node exited with code 137 (OOMKilled)"
                    ))
            }
            (Fate::Evict, Some(c)) => {
                // "was deleted" when a replica saw it terminating, "disappeared" when it was
                // already gone by the time one looked (during a handover, say).
                c.type_ == "Failed"
                    && c.reason == "FailedJobs"
                    && (c
                        .message
                        .contains(&format!("pod {worker} was deleted while the job ran"))
                        || c.message
                            .contains(&format!("pod {worker} disappeared while the job ran")))
            }
            _ => false,
        };
        // A failure caused by a kwok delete nobody asked for (see `stray_kwok_deletes`) is
        // kwok's, not the operator's; likewise one because someone else deleted the job's Secret
        // while it ran (the garbage collector, when an API server restart hid the TrainJob from
        // it for a moment). Excused, up to EXCUSED_MAX, each with its evidence.
        let failed = ended.filter(|c| c.type_ == "Failed");
        let kwoks = failed.and_then(|c| {
            stray_kwok_deletes(&audit, &ns.name, &job.name)
                .into_iter()
                .find(|(pod, _)| c.message.contains(&format!("pod {pod} ")))
                .map(|(pod, evidence)| format!("a stray kwok delete of pod {pod}: {evidence}"))
        });
        let secret = format!("{}-mpi-ssh-auth", job.name);
        let keyless = failed.filter(|c| c.reason == "SSHSecretDeleted").and_then(|_| {
            let others = secret_deleted_by_others(&audit, &ns.name, &secret, Identity::Operator.user());
            (!others.is_empty()).then(|| format!("Secret {secret} deleted by {}", others.join(", ")))
        });
        if let (false, Some(c), Some(cause)) = (ok, failed, kwoks.or(keyless)) {
            excused.push(format!(
                "{} ({:?}) failed ({}: {}) by {cause}",
                job.name, job.fate, c.reason, c.message
            ));
        } else if !ok {
            wrong.push(format!(
                "{} ({:?}): {:?}",
                job.name,
                job.fate,
                ended.map(|c| (&c.type_, &c.reason, &c.message))
            ));
        }
        let restarts = u32::try_from(status.restarts.unwrap_or(0)).unwrap_or(u32::MAX);
        let seen = recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restarts(&ns.name, &tj.uid().unwrap_or_default());
        let want = u32::from(job.fate == Fate::Restart);
        if (restarts, seen) != (want, want) {
            wrong.push(format!(
                "{}: status.restarts {restarts}, recorded {seen}, injected {want}",
                job.name
            ));
        }
    }
    for e in &excused {
        eprintln!("excused: {e}");
    }
    if !wrong.is_empty() {
        panic!("jobs that did not end as their fate says:\n{}", wrong.join("\n"));
    }
    assert!(
        excused.len() <= EXCUSED_MAX,
        "{} jobs failed for causes outside the operator, more than {EXCUSED_MAX}:\n{}",
        excused.len(),
        excused.join("\n")
    );

    // Nothing left without a live owner (the garbage collector removes a deleted job's children).
    let live: BTreeSet<String> = found.values().filter_map(|j| j.uid()).collect();
    let left = || async { leftovers(&c, &ns.name, &live).await };
    eventually(
        "every child to have a live owner",
        Duration::from_secs(60),
        || async {
            let left = left().await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await;

    // Every job finished or is gone, so no live replica counts one as active. (One that lost
    // the Lease and exited keeps the gauge it had.)
    eventually(
        "no live replica to count a job as active",
        Duration::from_secs(30),
        || async {
            let counting: Vec<(String, i64)> = replicas
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, op)| !op.exited())
                .map(|(name, op)| (name.clone(), active(&op.metrics.encode())))
                .filter(|(_, n)| *n != 0)
                .collect();
            if counting.is_empty() {
                Ok(())
            } else {
                Err(format!("{counting:?}"))
            }
        },
    )
    .await;

    let violations = recorder
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .violations
        .clone();
    assert!(violations.is_empty(), "{violations:#?}");

    // Never two leaders at once, by the Lease's history and the replicas' writes as the API
    // server logged them. The Lease changed hands, and every job was written to: a history
    // with less was not read right. (A log without the Lease's versions or the replicas' names
    // would show as violations.)
    let leadership = Leadership::read(&std::fs::read_to_string(bed.audit_log()).expect("the audit log"));
    let two = leadership.violations();
    assert!(
        two.is_empty(),
        "two leaders at once ({}):\n{}",
        leadership.summary(),
        two.join("\n")
    );
    assert!(
        leadership.tenures().len() >= 2 && leadership.writes.len() > JOBS,
        "{handovers} handovers, yet {}",
        leadership.summary()
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    eprintln!(
        "chaos: {JOBS} jobs settled in {elapsed:?} through {handovers} leader handovers ({restarts} replicas restarted after losing the Lease), a kube-apiserver and an etcd restart; kwok was nudged {nudges} times; {} jobs excused (at most {EXCUSED_MAX}); {}",
        excused.len(),
        leadership.summary()
    );

    // Broken on purpose, live: the same checks must now fail.
    let owner = found.values().next().expect("a job");
    let owner_ref = json!([{"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "name": owner.name_any(), "uid": owner.uid(), "controller": true}]);
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns.name);
    let fake: Secret = serde_json::from_value(json!({"metadata": {"name": "rekeyed",
        "labels": {"app.kubernetes.io/managed-by": "trainjob-operator"}, "ownerReferences": owner_ref},
        "stringData": {"ssh-privatekey": "one"}}))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &fake)
        .await
        .expect("a Secret");
    let patch = Patch::Merge(json!({"stringData": {"ssh-privatekey": "two"}}));
    secrets
        .patch("rekeyed", &PatchParams::default(), &patch)
        .await
        .expect("re-key it");
    eventually(
        "the recording to catch the changed key",
        Duration::from_secs(30),
        || async {
            let violations = recorder
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .violations
                .clone();
            if violations.iter().any(|v| v.contains("rekeyed")) {
                Ok(())
            } else {
                Err(format!("{violations:?}"))
            }
        },
    )
    .await;
    let orphan: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "orphan",
        "labels": {"app.kubernetes.io/managed-by": "trainjob-operator"}}}))
    .expect("configmap");
    Api::<ConfigMap>::namespaced(c.clone(), &ns.name)
        .create(&PostParams::default(), &orphan)
        .await
        .expect("an orphan");
    assert_eq!(left().await, ["ConfigMap orphan"], "the orphan check sees it");

    // An operator that reconciles without holding the Lease: the leadership check names it once
    // it writes. The elected replicas go first: one that agrees with a leader that made
    // everything already has nothing to write (seen).
    let elected = std::mem::take(&mut *replicas.lock().unwrap_or_else(|e| e.into_inner()));
    tokio::task::spawn_blocking(move || elected.into_iter().for_each(|(_, op)| op.stop()))
        .await
        .expect("stopping the replicas");
    let rogue = Operator::start();
    let rogue_job: TrainJob = serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": "rogue", "namespace": ns.name},
        "spec": {"runtimeRef": {"kind": "TrainingRuntime", "name": "chaos"}, "trainer": {"numNodes": 1}},
    }))
    .expect("job");
    jobs.create(&PostParams::default(), &rogue_job)
        .await
        .expect("a job for the rogue replica");
    let caught = format!("replica {}, which never held the Lease, wrote", rogue.identity);
    let agent = support::leaders::user_agent(&rogue.identity);
    eventually(
        "the leadership check to catch a replica writing without the Lease",
        Duration::from_secs(60),
        || async {
            let audit = std::fs::read_to_string(bed.audit_log()).map_err(|e| e.to_string())?;
            if !audit.contains(&agent) {
                return Err("no request of the rogue replica yet".to_string());
            }
            let two = Leadership::read(&audit).violations();
            if two.iter().any(|v| v.starts_with(&caught)) {
                Ok(())
            } else {
                Err(format!("{two:?}"))
            }
        },
    )
    .await;
    tokio::task::spawn_blocking(move || rogue.stop())
        .await
        .expect("stopping the rogue replica");
}

/// The jobs the `trainjob_jobs_active` gauge counts, over all phases.
fn active(exposition: &str) -> i64 {
    exposition
        .lines()
        .filter(|l| l.starts_with("trainjob_jobs_active{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum()
}

/// On a failure, keeps the replicas' log, the API server's audit log and kwok's log in
/// `target/tmp/chaos-*.log` (the bed's directory goes with the process).
struct PostMortem(&'static trainjob_testbed::Bed);

impl Drop for PostMortem {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        // The replicas' log holds no key material (the key scan checks).
        let _ = std::fs::write(dir.join("chaos-operator.log"), support::logs::raw().join("\n"));
        let _ = std::fs::copy(self.0.audit_log(), dir.join("chaos-audit.log"));
        let _ = std::fs::copy(self.0.dir().join("kwok.log"), dir.join("chaos-kwok.log"));
        eprintln!("the logs: {}/chaos-{{operator,audit,kwok}}.log", dir.display());
    }
}

/// Every object with the operator's label in `ns` whose controller owner is not a live job.
async fn leftovers(c: &Client, ns: &str, live: &BTreeSet<String>) -> Vec<String> {
    let lp = ListParams::default().labels(MANAGED);
    let (pods, secrets, maps, services, policies) = (
        Api::<Pod>::namespaced(c.clone(), ns),
        Api::<Secret>::namespaced(c.clone(), ns),
        Api::<ConfigMap>::namespaced(c.clone(), ns),
        Api::<Service>::namespaced(c.clone(), ns),
        Api::<NetworkPolicy>::namespaced(c.clone(), ns),
    );
    let (pods, secrets, maps, services, policies) = futures::join!(
        pods.list(&lp),
        secrets.list(&lp),
        maps.list(&lp),
        services.list(&lp),
        policies.list(&lp),
    );
    let (pods, secrets, maps, services, policies) = (
        pods.expect("pods").items,
        secrets.expect("secrets").items,
        maps.expect("configmaps").items,
        services.expect("services").items,
        policies.expect("networkpolicies").items,
    );
    let objects = pods
        .iter()
        .map(|o| ("Pod", &o.metadata))
        .chain(secrets.iter().map(|o| ("Secret", &o.metadata)))
        .chain(maps.iter().map(|o| ("ConfigMap", &o.metadata)))
        .chain(services.iter().map(|o| ("Service", &o.metadata)))
        .chain(policies.iter().map(|o| ("NetworkPolicy", &o.metadata)));
    orphans(objects, live)
}
