//! Pods by TrainJob: an index keyed by namespace and job, kept current from the pod watch, so a
//! reconcile reads its own pods without scanning every pod the operator manages.
//!
//! Each pod is kept as its (trimmed) JSON and decoded when a reconcile reads it: a decoded
//! `Pod` takes about 4.7 KiB however little of it is set (its structs hold every optional field
//! inline), its JSON about 1.2 KiB, and the pods of a burst of 1000 jobs took most of the
//! operator's memory. A reconcile decodes its job's few pods, in microseconds.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;

use crate::names::TRAINJOB_NAME_LABEL;

type Key = (String, String);
type Pods = HashMap<Key, HashMap<String, Stored>>;

/// The pods of every job, as last seen by the watch.
#[derive(Default)]
pub struct JobPods {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    pods: Pods,
    /// A relist in progress: replaces `pods` whole once complete, so a pod deleted while the
    /// watch was down does not linger.
    relist: Option<Pods>,
}

/// One pod as the index keeps it.
struct Stored {
    json: Arc<[u8]>,
    /// Its node, for [`JobPods::jobs_on`] without decoding every pod.
    node: Option<Box<str>>,
    /// A hash of what decisions read of it (see [`decisions`]).
    decisions: u64,
}

impl Stored {
    /// `None` if the pod cannot be encoded, which a pod decoded from the API server's JSON can
    /// always be.
    fn new(pod: &Pod) -> Option<Self> {
        Some(Stored {
            json: serde_json::to_vec(pod).ok()?.into(),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .map(Box::from),
            decisions: decisions(pod)?,
        })
    }
}

fn decode(json: &[u8]) -> Option<Pod> {
    let pod = serde_json::from_slice(json);
    if let Err(e) = &pod {
        tracing::error!(error = %e, "a pod of the pod index could not be decoded");
    }
    pod.ok()
}

fn key(pod: &Pod) -> Option<(Key, String)> {
    let ns = pod.metadata.namespace.clone()?;
    let job = pod.metadata.labels.as_ref()?.get(TRAINJOB_NAME_LABEL)?.clone();
    Some(((ns, job), pod.metadata.name.clone()?))
}

/// A pod as the index keeps it, under its job and name; `None` for a pod without them.
fn stored(pod: &Pod) -> Option<(Key, String, Stored)> {
    let (job, name) = key(pod)?;
    let Some(stored) = Stored::new(pod) else {
        tracing::error!(pod = %name, "a pod could not be encoded for the pod index");
        return None;
    };
    Some((job, name, stored))
}

/// Keeps `pod` in `pods`; whether that can change a decision of its job (a new pod, or one that
/// changed in what decisions read).
fn insert(pods: &mut Pods, pod: Option<(Key, String, Stored)>) -> bool {
    let Some((job, name, stored)) = pod else {
        return true;
    };
    let now = stored.decisions;
    let before = pods.entry(job).or_default().insert(name, stored);
    before.is_none_or(|before| before.decisions != now)
}

impl JobPods {
    /// Applies one watch event, with the same relist semantics as kube's reflector store.
    /// Returns whether the event can change a decision of the pod's job: not for a change only
    /// in what no decision reads (see [`decisions`]).
    pub fn apply(&self, event: &Event<Pod>) -> bool {
        // Encoded before the lock is taken: reconciles read meanwhile.
        let pod = match event {
            Event::Apply(pod) | Event::InitApply(pod) => stored(pod),
            _ => None,
        };
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Apply(_) => return insert(&mut state.pods, pod),
            Event::Delete(pod) => {
                if let Some((job, name)) = key(pod)
                    && let Some(pods) = state.pods.get_mut(&job)
                {
                    pods.remove(&name);
                    if pods.is_empty() {
                        state.pods.remove(&job);
                    }
                }
            }
            Event::Init => state.relist = Some(Pods::new()),
            Event::InitApply(_) => {
                insert(state.relist.get_or_insert_default(), pod);
            }
            Event::InitDone => {
                if let Some(pods) = state.relist.take() {
                    state.pods = pods;
                }
            }
        }
        true
    }

    /// The jobs (namespace, name) with a pod on node `node`. A scan: only for a node that stopped
    /// being Ready, which is rare.
    pub fn jobs_on(&self, node: &str) -> Vec<(String, String)> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .pods
            .iter()
            .filter(|(_, pods)| pods.values().any(|p| p.node.as_deref() == Some(node)))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The pods of job `job` in namespace `ns`.
    pub fn of(&self, ns: &str, job: &str) -> Vec<Arc<Pod>> {
        let encoded: Vec<Arc<[u8]>> = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            let pods = state.pods.get(&(ns.to_string(), job.to_string()));
            pods.into_iter()
                .flat_map(|pods| pods.values().map(|p| p.json.clone()))
                .collect()
        };
        encoded
            .iter()
            .filter_map(|json| decode(json).map(Arc::new))
            .collect()
    }
}

/// A hash of what decisions read of `pod`: two versions with the same hash are the same to
/// every decision. Its binding to a node is not read, unless the pod is a member of a native
/// gang (the gang's condition says when all are bound): a pod's events are its creation, its
/// binding, its start and its end, and waking the job for each binding cost a reconcile per pod
/// in a burst that decided nothing. A pod bound after it was unschedulable differs all the same
/// (its `PodScheduled` condition turns True), and a node lost under a pod wakes the pod's job by
/// the node's own watch.
fn decisions(pod: &Pod) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(&normalized(pod)).ok()?.hash(&mut hasher);
    Some(hasher.finish())
}

/// `pod` without what no decision reads: its resource version, and outside a native gang its
/// node and a `PodScheduled` condition that is True.
fn normalized(pod: &Pod) -> Pod {
    let mut pod = pod.clone();
    pod.metadata.resource_version = None;
    let gang = pod.spec.as_ref().is_some_and(|s| s.scheduling_group.is_some());
    if !gang {
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = None;
        }
        if let Some(conditions) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            conditions.retain(|c| !(c.type_ == "PodScheduled" && c.status == "True"));
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(ns: &str, job: &str, name: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {TRAINJOB_NAME_LABEL: job}},
        }))
        .expect("pod")
    }

    fn names(index: &JobPods, ns: &str, job: &str) -> Vec<String> {
        let mut v: Vec<String> = index
            .of(ns, job)
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn pods_are_found_by_namespace_and_job_only() {
        let index = JobPods::default();
        index.apply(&Event::Apply(pod("a", "pi", "pi-node-0-0")));
        index.apply(&Event::Apply(pod("a", "pi", "pi-node-0-1")));
        index.apply(&Event::Apply(pod("b", "pi", "pi-node-0-0")));
        index.apply(&Event::Apply(pod("a", "other", "other-node-0-0")));
        assert_eq!(names(&index, "a", "pi"), ["pi-node-0-0", "pi-node-0-1"]);
        assert_eq!(names(&index, "b", "pi"), ["pi-node-0-0"]);
        assert_eq!(
            *index.of("b", "pi")[0],
            pod("b", "pi", "pi-node-0-0"),
            "kept whole"
        );
        index.apply(&Event::Delete(pod("a", "pi", "pi-node-0-0")));
        assert_eq!(names(&index, "a", "pi"), ["pi-node-0-1"]);
    }

    #[test]
    fn a_relist_replaces_everything_once_done() {
        let index = JobPods::default();
        index.apply(&Event::Apply(pod("a", "pi", "gone")));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("a", "pi", "kept")));
        assert_eq!(
            names(&index, "a", "pi"),
            ["gone"],
            "old view until the relist is complete"
        );
        index.apply(&Event::InitDone);
        assert_eq!(names(&index, "a", "pi"), ["kept"]);
    }

    #[test]
    fn a_binding_alone_wakes_nothing_outside_a_native_gang() {
        let at = |gang: bool, node: Option<&str>, scheduled: Option<&str>, phase: &str, rv: &str| -> Pod {
            let mut pod = pod("a", "pi", "pi-node-0-0");
            pod.metadata.resource_version = Some(rv.into());
            let mut spec = json!({"containers": []});
            if let Some(node) = node {
                spec["nodeName"] = json!(node);
            }
            if gang {
                spec["schedulingGroup"] = json!({"podGroupName": "pi"});
            }
            pod.spec = Some(serde_json::from_value(spec).expect("spec"));
            let conditions: Vec<_> = scheduled
                .map(|s| json!({"type": "PodScheduled", "status": s}))
                .into_iter()
                .collect();
            pod.status = Some(
                serde_json::from_value(json!({"phase": phase, "conditions": conditions})).expect("status"),
            );
            pod
        };
        for gang in [false, true] {
            let index = JobPods::default();
            assert!(
                index.apply(&Event::Apply(at(gang, None, None, "Pending", "1"))),
                "a new pod"
            );
            assert_eq!(
                index.apply(&Event::Apply(at(gang, Some("n1"), Some("True"), "Pending", "2"))),
                gang,
                "bound: only a gang's member wakes its job"
            );
            assert_eq!(
                index.of("a", "pi")[0].metadata.resource_version.as_deref(),
                Some("2")
            );
            assert!(index.apply(&Event::Apply(at(gang, Some("n1"), Some("True"), "Running", "3"))));
            assert!(!index.apply(&Event::Apply(at(gang, Some("n1"), Some("True"), "Running", "4"))));
            assert!(index.apply(&Event::Delete(at(gang, Some("n1"), Some("True"), "Running", "5"))));
        }
        let index = JobPods::default();
        index.apply(&Event::Apply(at(false, None, Some("False"), "Pending", "1")));
        assert!(
            index.apply(&Event::Apply(at(false, Some("n1"), Some("True"), "Pending", "2"))),
            "bound after it was unschedulable"
        );
    }
}
