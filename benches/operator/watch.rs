//! The bench's own view of a scenario: a watch on one namespace's pods and TrainJobs that notes,
//! with the bench's monotonic clock, when it first saw each milestone of each job.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use trainjob_operator::api::TrainJob;
use trainjob_operator::names;

/// When the watch first saw each thing of one job.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// First sight of each worker pod, by name.
    pub workers: BTreeMap<String, Instant>,
    /// First sight of each worker pod Ready, by name.
    pub workers_ready: BTreeMap<String, Instant>,
    /// First sight of a launcher pod.
    pub launcher: Option<Instant>,
    /// First sight of the launcher Succeeded.
    pub launcher_succeeded: Option<Instant>,
    /// First sight of the TrainJob's `Complete` condition.
    pub complete: Option<Instant>,
    /// Signalled when another worker is first seen Ready and when the launcher is first seen
    /// Succeeded (one waiter per job: the floor's).
    changed: Arc<Notify>,
}

impl Seen {
    /// When the `n`-th worker appeared: all of an `n`-worker job created.
    pub fn workers_created(&self, n: usize) -> Option<Instant> {
        let mut at: Vec<Instant> = self.workers.values().copied().collect();
        at.sort();
        (at.len() >= n && n > 0).then(|| at[n - 1])
    }
}

/// Milestones by job name, filled by two watch tasks until dropped.
pub struct Recorder {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    /// Starts watching `namespaces` (job names are unique across them); returns once every
    /// watch has listed (so nothing is missed).
    pub async fn start(client: &Client, namespaces: &[String]) -> Recorder {
        let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
        let watches = 2 * namespaces.len();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watches.max(1));
        let managed =
            watcher::Config::default().labels(&format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY));
        let mut tasks = Vec::new();
        for ns in namespaces {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            let jobs: Api<TrainJob> = Api::namespaced(client.clone(), ns);
            tasks.push(tokio::spawn(record(
                pods,
                managed.clone(),
                seen.clone(),
                ready_tx.clone(),
                note_pod,
            )));
            tasks.push(tokio::spawn(record(
                jobs,
                watcher::Config::default(),
                seen.clone(),
                ready_tx.clone(),
                note_job,
            )));
        }
        for _ in 0..watches {
            ready_rx.recv().await;
        }
        Recorder { seen, tasks }
    }

    /// What was seen so far of one job.
    pub fn job(&self, name: &str) -> Option<Seen> {
        self.seen.lock().ok().and_then(|s| s.get(name).cloned())
    }

    /// Returns once what was seen of job `name` is `done`, when that is a worker Ready or the
    /// launcher Succeeded (the milestones that signal).
    pub async fn until(&self, name: &str, done: impl Fn(&Seen) -> bool) {
        loop {
            let changed = {
                let Ok(mut seen) = self.seen.lock() else { return };
                let entry = seen.entry(name.to_string()).or_default();
                if done(entry) {
                    return;
                }
                entry.changed.clone()
            };
            // `notify_one` keeps a permit when nobody waits yet, so a change between the check
            // above and this wait is not missed.
            changed.notified().await;
        }
    }

    /// What was seen so far, by job name.
    pub fn snapshot(&self) -> HashMap<String, Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// How many jobs have reached `done` so far.
    pub fn count(&self, done: impl Fn(&Seen) -> bool) -> usize {
        self.seen
            .lock()
            .map(|s| s.values().filter(|s| done(s)).count())
            .unwrap_or(0)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Feeds one watch into `note` until the task is aborted; says when it has listed.
async fn record<K>(
    api: Api<K>,
    config: watcher::Config,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    ready: tokio::sync::mpsc::Sender<()>,
    note: fn(&Mutex<HashMap<String, Seen>>, &K),
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut events = std::pin::pin!(watcher::watcher(api, config));
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(object) | Event::InitApply(object)) => note(&seen, &object),
            Ok(Event::InitDone) => {
                let _ = ready.send(()).await;
            }
            _ => {}
        }
    }
}

fn note_pod(seen: &Mutex<HashMap<String, Seen>>, pod: &Pod) {
    let now = Instant::now();
    let labels = pod.labels();
    let Some(job) = labels.get(names::TRAINJOB_NAME_LABEL) else {
        return;
    };
    let Ok(mut seen) = seen.lock() else { return };
    let entry = seen.entry(job.clone()).or_default();
    match labels.get(names::JOB_ROLE_LABEL).map(String::as_str) {
        Some("launcher") => {
            entry.launcher.get_or_insert(now);
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase == Some("Succeeded") && entry.launcher_succeeded.is_none() {
                entry.launcher_succeeded = Some(now);
                entry.changed.notify_one();
            }
        }
        _ => {
            entry.workers.entry(pod.name_any()).or_insert(now);
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready && !entry.workers_ready.contains_key(&pod.name_any()) {
                entry.workers_ready.insert(pod.name_any(), now);
                entry.changed.notify_one();
            }
        }
    }
}

fn note_job(seen: &Mutex<HashMap<String, Seen>>, job: &TrainJob) {
    let complete = job.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
    });
    if !complete {
        return;
    }
    let now = Instant::now();
    if let Ok(mut seen) = seen.lock() {
        seen.entry(job.name_any())
            .or_default()
            .complete
            .get_or_insert(now);
    }
}
