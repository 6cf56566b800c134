//! API requests counted from the API server's audit log: every request the operator's identity
//! sent into a scenario's namespaces, by verb and resource, writes and reads apart. (Its
//! cluster-wide watches and lists are not any namespace's, so they are not counted here.)

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use serde::Deserialize;
use trainjob_operator::names;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    stage: String,
    verb: String,
    user: User,
    #[serde(rename = "objectRef")]
    object: Option<ObjectRef>,
    request_received_timestamp: Option<Timestamp>,
    stage_timestamp: Option<Timestamp>,
}

#[derive(Deserialize)]
struct User {
    username: String,
}

#[derive(Deserialize)]
struct ObjectRef {
    resource: Option<String>,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

/// Requests by `verb resource[/subresource]`.
pub type Counts = BTreeMap<String, u64>;

/// One job's way to its workers, in ms from its TrainJob's create (see [`Mark::paths`]).
pub use trainjob_testbed::bench::model::Path;

/// A position in the audit log, taken before a scenario.
pub struct Mark {
    path: PathBuf,
    offset: u64,
}

impl Mark {
    /// The log as far as it is written now.
    pub fn now(path: PathBuf) -> Mark {
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Mark { path, offset }
    }

    /// Requests by `user` into `namespaces` since the mark, by `verb resource[/subresource]`:
    /// (writes, reads). First writes a marker object as `writer` (the same user) into the
    /// first namespace and reads until the log shows it, so every earlier request has been
    /// flushed.
    pub async fn requests_since(
        &self,
        writer: &Client,
        user: &str,
        namespaces: &[String],
    ) -> (Counts, Counts) {
        let ns = namespaces.first().map(String::as_str).unwrap_or_default();
        static MARKERS: AtomicU32 = AtomicU32::new(0);
        let marker = format!(
            "bench-audit-marker-{}-{}",
            std::process::id(),
            MARKERS.fetch_add(1, Ordering::Relaxed)
        );
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(marker.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<ConfigMap>::namespaced(writer.clone(), ns)
            .create(&PostParams::default(), &cm)
            .await
            .expect("creating the audit marker");
        let marker_name = marker;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (requests, marked) = self.read(user, namespaces, &marker_name);
            if marked {
                return requests;
            }
            if Instant::now() >= deadline {
                // A log that rotated under the mark (the bed's no longer does) or dropped events:
                // the counts are then short, as the bench's output says, rather than the run lost.
                println!(
                    "  warning: the audit log never showed {marker_name}; this scenario's request counts may be incomplete"
                );
                return requests;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The completed requests logged since the mark.
    fn entries(&self) -> Vec<Entry> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str::<Entry>(&line).ok())
            .filter(|e| e.stage == "ResponseComplete")
            .collect()
    }

    /// Where each job's time went until its `workers` workers were created, by the API
    /// server's clock: from the TrainJob's create (the floor, which has none: from its first
    /// request), `user`'s first request naming one of the job's objects, its first write of
    /// one, its first pod create, and the last worker create's response. Call after
    /// [`Mark::requests_since`], which waits until the log has every request.
    pub fn paths(&self, user: &str, jobs: &[String], workers: usize) -> Vec<Path> {
        #[derive(Default)]
        struct Seen {
            created: Option<Timestamp>,
            request: Option<Timestamp>,
            write: Option<Timestamp>,
            pod: Option<Timestamp>,
            workers: Vec<Timestamp>,
        }
        let by_name = by_name(jobs);
        let mut seen: Vec<Seen> = jobs.iter().map(|_| Seen::default()).collect();
        let entries = self.entries();
        let is_create = |e: &Entry| {
            e.verb == "create" && e.object.as_ref().and_then(|o| o.resource.as_deref()) == Some("trainjobs")
        };
        for e in entries.iter().filter(|e| is_create(e)) {
            if let Some((i, _, at)) = job_of(&by_name, e) {
                seen[i].created = Some(at);
            }
        }
        for e in entries.iter().filter(|e| !is_create(e)) {
            let Some((i, name, at)) = job_of(&by_name, e) else {
                continue;
            };
            let pod = is_pod(e);
            let s = &mut seen[i];
            // Names are matched without their namespace: a request before the job's create
            // is for a namesake of an earlier scenario (a kept job's Secret deleted late).
            if e.user.username != user || s.created.is_some_and(|created| at < created) {
                continue;
            }
            s.request = Some(s.request.map_or(at, |t| t.min(at)));
            let write = matches!(e.verb.as_str(), "create" | "update" | "patch");
            if write {
                s.write = Some(s.write.map_or(at, |t| t.min(at)));
            }
            if write && pod {
                s.pod = Some(s.pod.map_or(at, |t| t.min(at)));
                if name.contains("-node-") {
                    s.workers.extend(e.stage_timestamp);
                }
            }
        }
        seen.into_iter()
            .filter_map(|s| {
                let start = s.created.or(s.request)?;
                let ms = |t: Timestamp| (t - start).total(k8s_openapi::jiff::Unit::Millisecond).ok();
                (s.workers.len() >= workers).then_some(())?;
                Some(Path {
                    first_request_ms: ms(s.request?)?,
                    first_write_ms: ms(s.write?)?,
                    first_pod_ms: ms(s.pod?)?,
                    workers_ms: ms(*s.workers.iter().max()?)?,
                })
            })
            .collect()
    }

    /// Prints every logged request naming one of `job`'s objects, by whom, with its times
    /// from the job's first request (for `BENCH_TRACE`).
    pub fn trace(&self, job: &str) {
        let by_name = by_name(&[job.to_string()]);
        let mut trace: Vec<(Timestamp, Option<Timestamp>, String)> = self
            .entries()
            .iter()
            .filter_map(|e| {
                let (_, name, at) = job_of(&by_name, e)?;
                let resource = e.object.as_ref()?.resource.as_deref().unwrap_or_default();
                Some((
                    at,
                    e.stage_timestamp,
                    format!("{} {} {resource} {name}", e.user.username, e.verb),
                ))
            })
            .collect();
        trace.sort_by_key(|t| t.0);
        let Some(start) = trace.first().map(|t| t.0) else {
            return;
        };
        let ms = |t: Timestamp| {
            (t - start)
                .total(k8s_openapi::jiff::Unit::Millisecond)
                .unwrap_or(0.0)
        };
        for (at, done, what) in trace {
            println!("    {:>8.1} → {:>8.1} ms  {what}", ms(at), done.map_or(0.0, ms));
        }
    }

    fn read(&self, user: &str, namespaces: &[String], marker: &str) -> ((Counts, Counts), bool) {
        let (mut writes, mut reads) = (Counts::new(), Counts::new());
        let mut marked = false;
        for entry in self.entries() {
            let Some(object) = entry.object else { continue };
            let in_scenario = object
                .namespace
                .as_ref()
                .is_some_and(|ns| namespaces.contains(ns));
            if entry.user.username != user || !in_scenario {
                continue;
            }
            if object.name.as_deref() == Some(marker) {
                marked = true;
                continue;
            }
            let resource = match object.subresource {
                Some(sub) => format!("{}/{sub}", object.resource.unwrap_or_default()),
                None => object.resource.unwrap_or_default(),
            };
            let write = matches!(
                entry.verb.as_str(),
                "create" | "update" | "patch" | "delete" | "deletecollection"
            );
            let counts = if write { &mut writes } else { &mut reads };
            *counts.entry(format!("{} {resource}", entry.verb)).or_default() += 1;
        }
        ((writes, reads), marked)
    }
}

/// Each job's index by the names of its TrainJob and the children named after it.
fn by_name(jobs: &[String]) -> HashMap<String, usize> {
    let mut by_name = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        for name in [
            job.clone(),
            names::runtime_snapshot(job),
            names::ssh_secret(job),
            names::hostfile_configmap(job),
        ] {
            by_name.insert(name, i);
        }
    }
    by_name
}

/// A pod itself, not one of its subresources.
fn is_pod(e: &Entry) -> bool {
    e.object
        .as_ref()
        .is_some_and(|o| o.resource.as_deref() == Some("pods") && o.subresource.is_none())
}

/// The job (index in `by_name`) whose object `e` names, the object's name and when the
/// request arrived.
fn job_of<'e>(by_name: &HashMap<String, usize>, e: &'e Entry) -> Option<(usize, &'e str, Timestamp)> {
    let object = e.object.as_ref()?;
    let at = e.request_received_timestamp?;
    let name = object.name.as_deref()?;
    let job = match is_pod(e) {
        // <job>-node-<i>-<j> or <job>-launcher-0-0.
        true => ["-node-", "-launcher-"]
            .iter()
            .find_map(|role| name.rfind(role).map(|at| &name[..at]))
            .and_then(|job| by_name.get(job)),
        false => by_name.get(name),
    };
    job.map(|&i| (i, name, at))
}
