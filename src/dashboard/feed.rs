//! The live feed of a namespace's jobs (or of one, `?job=NAME`, for a job's page), as
//! Server-Sent Events: first `snapshot` (every job, as the list answers), then `job` with a job's
//! new view whenever it changes, and `gone` when a job is deleted.
//!
//! Server-Sent Events rather than a WebSocket: the feed only flows to the browser (what the page
//! sends are ordinary API calls), it is plain HTTP that every proxy passes and `EventSource`
//! reconnects by itself, and it needs no second protocol in the server.
//!
//! Each connection watches with the caller's own client (a watch is never shared between people):
//! the namespace's jobs, and the operator's pods and frozen runtimes there. A change recomputes
//! the view of that one job, and only a view that differs from the one last sent is sent.
//!
//! A connection keeps only what the view reads, since every open page holds its own copy: pods
//! without their specs and managed fields, as JSON, one copy of each distinct frozen runtime (a
//! thousand jobs of one runtime share it), and a hash of each view sent rather than its text.
//!
//! Changes are sent at a pace: a few at once, then one send a second with every job that changed
//! meanwhile, each job's view once. A change after a quiet spell goes out at once; in a burst of
//! jobs each job's pods change state dozens of times in a minute, and every open page would
//! otherwise get a view for each (and the server build it).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::api::{Listed, Problem};
use super::identity::Identity;
use crate::api::TrainJob;
use crate::bucket::Bucket;
use crate::desired::snapshot;
use crate::names;
use crate::resolve::Runtime;
use crate::view::fetch::{self, FetchError};
use crate::view::{self, Sources};

/// Sends of changed views one connection makes at once after a quiet spell.
pub const SENDS_AT_ONCE: f64 = 10.0;
/// Sends one connection makes a second once those are spent, each with every job changed since.
pub const SENDS_PER_SECOND: f64 = 1.0;

/// What one connection knows of the namespace.
#[derive(Default)]
struct Known {
    jobs: BTreeMap<String, TrainJob>,
    /// Each job's pods by name, as the JSON of what the view reads of them (see [`slim`]): a
    /// decoded `Pod` takes about 4.7 KiB however little of it is set, its JSON a fifth of that,
    /// and a page in a burst follows thousands.
    pods: HashMap<String, BTreeMap<String, Box<[u8]>>>,
    runtimes: HashMap<String, Arc<Runtime>>,
    /// Each distinct frozen runtime once, by the hash of its ConfigMap's data.
    distinct: HashMap<u64, std::sync::Weak<Runtime>>,
    /// The hash of each job's view as last sent.
    sent: HashMap<String, u64>,
    /// While a watch lists again (after it lost its place), the jobs and pods it has listed;
    /// what it did not list is gone.
    relisted_jobs: Option<HashSet<String>>,
    relisted_pods: Option<HashSet<(String, String)>>,
}

impl Known {
    /// The view of job `name` if it differs from the one last sent (and is now the last sent).
    fn changed(&mut self, name: &str) -> Option<String> {
        let job = self.jobs.get(name)?;
        let pods: Vec<Pod> = self
            .pods
            .get(name)
            .map(|p| {
                p.values()
                    .filter_map(|json| serde_json::from_slice(json).ok())
                    .collect()
            })
            .unwrap_or_default();
        let view = view::view(
            job,
            Sources {
                runtime: self.runtimes.get(name).map(|rt| &**rt),
                pods: &pods,
                ..Sources::default()
            },
        );
        let listed = Listed {
            view,
            created: job.metadata.creation_timestamp.clone(),
        };
        let text = serde_json::to_string(&listed).ok()?;
        let hash = hash(&text);
        (self.sent.get(name) != Some(&hash)).then(|| {
            self.sent.insert(name.to_string(), hash);
            text
        })
    }

    /// The runtime frozen in `cm`, shared with every other job frozen on the same one.
    fn runtime(&mut self, cm: &ConfigMap) -> Option<Arc<Runtime>> {
        let key = hash(&cm.data);
        if let Some(known) = self.distinct.get(&key).and_then(std::sync::Weak::upgrade) {
            return Some(known);
        }
        let runtime = Arc::new(snapshot::read(cm).ok()?);
        self.distinct.retain(|_, rt| rt.strong_count() > 0);
        self.distinct.insert(key, Arc::downgrade(&runtime));
        Some(runtime)
    }
}

fn hash(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// What the view reads of a pod: its name, labels and deletion, its node, its status.
fn slim(pod: Pod) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name,
            labels: pod.metadata.labels,
            deletion_timestamp: pod.metadata.deletion_timestamp,
            ..ObjectMeta::default()
        },
        spec: pod.spec.map(|s| PodSpec {
            node_name: s.node_name,
            ..PodSpec::default()
        }),
        status: pod.status,
    }
}

/// One change seen by a watch (boxed: a pod is large).
enum Seen {
    Job(Box<watcher::Event<TrainJob>>),
    Pod(Box<watcher::Event<Pod>>),
    Runtime(Box<watcher::Event<ConfigMap>>),
    /// The user may not read ConfigMaps: the views go without frozen runtimes.
    NoRuntimes,
    Failed(String),
}

/// Which jobs a feed follows.
#[derive(serde::Deserialize)]
pub struct FeedQuery {
    /// Only this one (a job's page), watched by selector: other jobs' changes cost nothing.
    job: Option<String>,
}

/// `GET /api/namespaces/{ns}/feed`.
pub async fn feed(
    State(identity): State<Arc<Identity>>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    Query(query): Query<FeedQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let client = identity.client(&headers)?;
    // Whether the user may read the jobs and their pods is asked now, so a refusal is an
    // ordinary 403, not a broken stream. The snapshot then comes from the watches' own first
    // lists: each connection lists the namespace once.
    let probe = ListParams::default().limit(1);
    let (jobs, pods) = (
        Api::<TrainJob>::namespaced(client.clone(), &ns),
        Api::<Pod>::namespaced(client.clone(), &ns),
    );
    let (jobs, pods) = futures::join!(jobs.list(&probe), pods.list(&probe));
    jobs.map_err(|e| FetchError::new(e, &format!("listing TrainJobs in namespace {ns}")))?;
    pods.map_err(|e| FetchError::new(e, &format!("listing the TrainJobs' pods in namespace {ns}")))?;
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(follow(client, ns, query.job, tx));
    Ok(Sse::new(rx.map(Ok)).keep_alive(KeepAlive::default()))
}

/// First `snapshot`, once every watch has listed, then every change (at the pace the module
/// describes) until the browser goes away or a watch fails.
async fn follow(client: Client, ns: String, only: Option<String>, mut tx: mpsc::Sender<Event>) {
    let mut known = Known::default();
    let (all, managed) = fetch::selectors(only.as_deref());
    let selected = |params: kube::api::ListParams| watcher::Config {
        label_selector: params.label_selector,
        field_selector: params.field_selector,
        ..watcher::Config::default()
    };
    let (config, managed) = (selected(all), selected(managed));
    let jobs = watcher(Api::<TrainJob>::namespaced(client.clone(), &ns), config).map(|e| match e {
        Ok(e) => Seen::Job(Box::new(e)),
        Err(e) => Seen::Failed(e.to_string()),
    });
    let pods = watcher(Api::<Pod>::namespaced(client.clone(), &ns), managed.clone()).map(|e| match e {
        Ok(e) => Seen::Pod(Box::new(e)),
        Err(e) => Seen::Failed(e.to_string()),
    });
    // A user who may not read ConfigMaps still gets the rest (as the list does).
    let runtimes = watcher(Api::<ConfigMap>::namespaced(client, &ns), managed)
        .map(|e| match e {
            Ok(e) => Seen::Runtime(Box::new(e)),
            Err(_) => Seen::NoRuntimes,
        })
        .scan(false, |ended, seen| {
            let go_on = !*ended;
            *ended |= matches!(seen, Seen::NoRuntimes);
            std::future::ready(go_on.then_some(seen))
        });
    let mut seen = futures::stream::select(futures::stream::select(jobs, pods), runtimes).boxed();
    // Which watches have listed once (jobs, pods, runtimes); the snapshot waits for all three.
    let mut listed = [false; 3];
    let mut snapshot_sent = false;
    // The jobs changed since the last send, and when they go if the pace holds them.
    let mut dirty = BTreeSet::new();
    let mut pace = Bucket::full(SENDS_AT_ONCE, SENDS_PER_SECOND, Instant::now());
    let mut held_until: Option<Instant> = None;
    loop {
        let change = match held_until {
            Some(at) => tokio::select! {
                change = seen.next() => change,
                () = tokio::time::sleep_until(at.into()) => {
                    match send_views(&mut known, &mut dirty, &mut pace, &mut tx).await {
                        Ok(held) => held_until = held,
                        Err(_) => return,
                    }
                    continue;
                }
            },
            None => seen.next().await,
        };
        let Some(change) = change else { return };
        let mut touched = Vec::new();
        match &change {
            Seen::Job(e) if matches!(**e, watcher::Event::InitDone) => listed[0] = true,
            Seen::Pod(e) if matches!(**e, watcher::Event::InitDone) => listed[1] = true,
            Seen::Runtime(e) if matches!(**e, watcher::Event::InitDone) => listed[2] = true,
            Seen::NoRuntimes => listed[2] = true,
            _ => {}
        }
        match change {
            Seen::Job(event) => {
                let mut gone = Vec::new();
                match *event {
                    watcher::Event::Init => known.relisted_jobs = Some(HashSet::new()),
                    watcher::Event::InitApply(mut job) | watcher::Event::Apply(mut job) => {
                        job.drop_bookkeeping();
                        if let Some(listed) = known.relisted_jobs.as_mut() {
                            listed.insert(job.name_any());
                        }
                        touched.push(job.name_any());
                        known.jobs.insert(job.name_any(), job);
                    }
                    watcher::Event::InitDone => {
                        let listed = known.relisted_jobs.take().unwrap_or_default();
                        gone.extend(known.jobs.keys().filter(|j| !listed.contains(*j)).cloned());
                    }
                    watcher::Event::Delete(job) => gone.push(job.name_any()),
                }
                for name in gone {
                    known.jobs.remove(&name);
                    known.pods.remove(&name);
                    known.runtimes.remove(&name);
                    known.sent.remove(&name);
                    if !snapshot_sent {
                        continue;
                    }
                    let gone = Event::default()
                        .event("gone")
                        .data(json!({ "name": name }).to_string());
                    if tx.send(gone).await.is_err() {
                        return;
                    }
                }
            }
            Seen::Pod(event) => match *event {
                watcher::Event::Init => known.relisted_pods = Some(HashSet::new()),
                watcher::Event::InitDone => {
                    let listed = known.relisted_pods.take().unwrap_or_default();
                    for (job, pods) in known.pods.iter_mut() {
                        let before = pods.len();
                        pods.retain(|pod, _| listed.contains(&(job.clone(), pod.clone())));
                        if pods.len() != before {
                            touched.push(job.clone());
                        }
                    }
                }
                event => {
                    for (pod, present) in applied(event) {
                        let Some(job) = pod.labels().get(names::TRAINJOB_NAME_LABEL).cloned() else {
                            continue;
                        };
                        if let Some(listed) = known.relisted_pods.as_mut() {
                            listed.insert((job.clone(), pod.name_any()));
                        }
                        let pods = known.pods.entry(job.clone()).or_default();
                        let name = pod.name_any();
                        // A pod decoded from the API server's JSON always encodes again.
                        match present.then(|| serde_json::to_vec(&slim(pod))) {
                            Some(Ok(json)) => pods.insert(name, json.into_boxed_slice()),
                            _ => pods.remove(&name),
                        };
                        touched.push(job);
                    }
                }
            },
            Seen::Runtime(event) => {
                for (cm, present) in applied(*event) {
                    let Some(job) = cm.labels().get(names::TRAINJOB_NAME_LABEL).cloned() else {
                        continue;
                    };
                    if cm.name_any() != names::runtime_snapshot(&job) {
                        continue;
                    }
                    match present.then(|| known.runtime(&cm)).flatten() {
                        Some(runtime) => known.runtimes.insert(job.clone(), runtime),
                        None => known.runtimes.remove(&job),
                    };
                    touched.push(job);
                }
            }
            Seen::NoRuntimes => {}
            Seen::Failed(why) => {
                let said = json!({"message": format!("the live feed stopped: {why}; reload the page")});
                let _ = tx
                    .send(Event::default().event("problem").data(said.to_string()))
                    .await;
                return;
            }
        }
        if !snapshot_sent {
            if listed.iter().all(|l| *l) {
                let names: Vec<String> = known.jobs.keys().cloned().collect();
                let items: Vec<String> = names.iter().filter_map(|n| known.changed(n)).collect();
                let data = format!("{{\"items\":[{}]}}", items.join(","));
                if tx
                    .send(Event::default().event("snapshot").data(data))
                    .await
                    .is_err()
                {
                    return;
                }
                snapshot_sent = true;
            }
            continue;
        }
        dirty.extend(touched);
        if held_until.is_none() {
            match send_views(&mut known, &mut dirty, &mut pace, &mut tx).await {
                Ok(held) => held_until = held,
                Err(_) => return,
            }
        }
    }
}

/// Sends the changed views of the `dirty` jobs if `pace` lets it now; otherwise when it will.
/// An error once the browser went away.
async fn send_views(
    known: &mut Known,
    dirty: &mut BTreeSet<String>,
    pace: &mut Bucket,
    tx: &mut mpsc::Sender<Event>,
) -> Result<Option<Instant>, mpsc::SendError> {
    if dirty.is_empty() {
        return Ok(None);
    }
    let now = Instant::now();
    if let Err(wait) = pace.ready(now) {
        return Ok(Some(now + wait));
    }
    let views: Vec<String> = std::mem::take(dirty)
        .iter()
        .filter_map(|job| known.changed(job))
        .collect();
    // Only a send takes from the pace: changes no view shows (a pod's field the page does not
    // read) would otherwise use it up, and hold back the next change that does show.
    if views.is_empty() {
        return Ok(None);
    }
    // There is one: `ready` said so at the same `now`.
    let _ = pace.take(now);
    for text in views {
        tx.send(Event::default().event("job").data(text)).await?;
    }
    Ok(None)
}

/// The objects of a watch event, each with whether it now exists.
fn applied<K>(event: watcher::Event<K>) -> Vec<(K, bool)> {
    match event {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![(o, true)],
        watcher::Event::Delete(o) => vec![(o, false)],
        watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
    }
}
