//! What must hold however the operator was disturbed, checked from the test's own watch
//! recording and a final listing, never from the operator's opinion of itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;

/// A pod's place in its job: namespace, job, replicated job, job index, index.
type Slot = (String, String, String, String, String);

const JOB: &str = "trainer.kubeflow.org/trainjob-name";
const RJOB: &str = "trainer.kubeflow.org/replicated-job";
const JOB_INDEX: &str = "jobset.sigs.k8s.io/job-index";
const INDEX: &str = "batch.kubernetes.io/job-completion-index";
const ATTEMPT: &str = "trainer.kubeflow.org/restart-attempt";

fn slot(pod: &Pod) -> Option<Slot> {
    let labels = pod.metadata.labels.as_ref()?;
    let get = |k: &str| labels.get(k).cloned();
    Some((
        pod.metadata.namespace.clone()?,
        get(JOB)?,
        get(RJOB)?,
        get(JOB_INDEX)?,
        get(INDEX)?,
    ))
}

/// Folds watch events of pods and Secrets, noting every violation as it happens.
#[derive(Default)]
pub struct Recorder {
    /// Pod uids that exist, by slot.
    live: HashMap<Slot, BTreeSet<String>>,
    /// During a relist: the pods listed so far.
    relist: Option<HashMap<Slot, BTreeSet<String>>>,
    /// Highest restart attempt seen per (namespace, job uid).
    attempts: HashMap<(String, String), u32>,
    /// The first key data seen per (namespace, Secret name, owner uid).
    keys: HashMap<(String, String, String), BTreeMap<String, Vec<u8>>>,
    /// What went wrong, in words.
    pub violations: Vec<String>,
}

impl Recorder {
    /// One pod watch event.
    pub fn pod(&mut self, event: &Event<Pod>) {
        match event {
            Event::Apply(pod) => {
                self.note_attempt(pod);
                if let (Some(slot), Some(uid)) = (slot(pod), pod.metadata.uid.clone()) {
                    let uids = self.live.entry(slot.clone()).or_default();
                    uids.insert(uid);
                    if uids.len() > 1 {
                        self.violations
                            .push(format!("two pods at once in slot {slot:?}: {uids:?}"));
                    }
                }
            }
            Event::Delete(pod) => {
                if let (Some(slot), Some(uid)) = (slot(pod), &pod.metadata.uid)
                    && let Some(uids) = self.live.get_mut(&slot)
                {
                    uids.remove(uid);
                }
            }
            Event::Init => self.relist = Some(HashMap::new()),
            Event::InitApply(pod) => {
                self.note_attempt(pod);
                if let (Some(slot), Some(uid)) = (slot(pod), pod.metadata.uid.clone()) {
                    let uids = self
                        .relist
                        .get_or_insert_default()
                        .entry(slot.clone())
                        .or_default();
                    uids.insert(uid);
                    if uids.len() > 1 {
                        self.violations
                            .push(format!("two pods at once in slot {slot:?}: {uids:?}"));
                    }
                }
            }
            Event::InitDone => {
                if let Some(listed) = self.relist.take() {
                    self.live = listed;
                }
            }
        }
    }

    fn note_attempt(&mut self, pod: &Pod) {
        let Some(owner) = controller_uid(&pod.metadata) else {
            return;
        };
        let attempt = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ATTEMPT))
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let seen = self.attempts.entry((ns, owner)).or_default();
        *seen = (*seen).max(attempt);
    }

    /// One Secret watch event: a job's key must never change while the job lives.
    pub fn secret(&mut self, event: &Event<Secret>) {
        let (Event::Apply(secret) | Event::InitApply(secret)) = event else {
            return;
        };
        let Some(owner) = controller_uid(&secret.metadata) else {
            return;
        };
        let key = (
            secret.metadata.namespace.clone().unwrap_or_default(),
            secret.metadata.name.clone().unwrap_or_default(),
            owner,
        );
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        match self.keys.get(&key) {
            None => {
                self.keys.insert(key, data);
            }
            // Only whether it changed is recorded: key material never reaches test output.
            Some(first) if *first != data => self.violations.push(format!(
                "the SSH key in Secret {}/{} changed during its job's life",
                key.0, key.1
            )),
            Some(_) => {}
        }
    }

    /// The gang restarts the recording saw for the job with `uid` in `ns`.
    pub fn restarts(&self, ns: &str, uid: &str) -> u32 {
        self.attempts
            .get(&(ns.to_string(), uid.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// The uid of the object's controller owner.
pub fn controller_uid(meta: &ObjectMeta) -> Option<String> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// Objects (kind, name, meta) left without a live owner among `objects`, given the uids of the
/// TrainJobs that still exist.
pub fn orphans<'a>(
    objects: impl IntoIterator<Item = (&'static str, &'a ObjectMeta)>,
    live_jobs: &BTreeSet<String>,
) -> Vec<String> {
    objects
        .into_iter()
        .filter(|(_, meta)| controller_uid(meta).is_none_or(|uid| !live_jobs.contains(&uid)))
        .map(|(kind, meta)| format!("{kind} {}", meta.name.as_deref().unwrap_or_default()))
        .collect()
}

/// Pods of `job` in `ns` that kwok deleted while nobody had asked for them to go, read from the
/// API server's audit log (JSON lines), each with the evidence: when that incarnation was created
/// and when kwok deleted it.
///
/// kwok (v0.8) deletes a terminating pod by name, without the uid precondition a kubelet sends,
/// and now and then repeats such a delete after the pod is gone; when the operator has created
/// the pod's successor under the same name by then (a gang restart, a resume), the successor
/// goes instead, which no real node does. A kwok delete is stray when, since that name's latest
/// create, nobody deleted or evicted the pod (a collection delete of the job's pods counts). The
/// bed refuses such deletes (`trainjob_testbed::KWOK_GUARD`), so none should succeed any more.
pub fn stray_kwok_deletes(audit: &str, ns: &str, job: &str) -> BTreeMap<String, String> {
    /// One pod write, by what it means for the pod it names.
    enum Write {
        Create(String),
        /// A delete or eviction the pod's owner or a user asked for.
        Delete(String),
        /// A delete of all the job's pods by label.
        DeleteAll,
        Kwok(String),
    }
    let selector = format!("trainjob-name%3D{job}");
    let selects_job = |uri: &str| {
        uri.split_once(&selector)
            .is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with('&') || rest.starts_with("%2C"))
    };
    let ours = |name: &str| name.starts_with(&format!("{job}-"));
    let mut writes: Vec<(String, Write)> = audit
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| {
            e["objectRef"]["resource"] == "pods"
                && e["objectRef"]["namespace"] == ns
                && e["stage"] == "ResponseComplete"
                && e["responseStatus"]["code"]
                    .as_u64()
                    .is_some_and(|c| (200..300).contains(&c))
        })
        .filter_map(|e| {
            let name = e["objectRef"]["name"]
                .as_str()
                .filter(|n| ours(n))
                .map(str::to_string);
            let kwok = e["userAgent"].as_str().is_some_and(|a| a.starts_with("kwok"));
            let write = match e["verb"].as_str()? {
                "create" if e["objectRef"]["subresource"] == "eviction" => Write::Delete(name?),
                "create" => Write::Create(name?),
                "delete" if kwok => Write::Kwok(name?),
                "delete" => Write::Delete(name?),
                "deletecollection" if selects_job(e["requestURI"].as_str()?) => Write::DeleteAll,
                _ => return None,
            };
            Some((e["stageTimestamp"].as_str()?.to_string(), write))
        })
        .collect();
    // RFC 3339 in UTC with a fixed precision: the strings sort in time order.
    writes.sort_by(|a, b| a.0.cmp(&b.0));
    // Per pod name: when its latest incarnation was created, and whether someone asked for it
    // to go.
    let mut asked: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let mut stray = BTreeMap::new();
    for (at, write) in writes {
        match write {
            Write::Create(name) => {
                asked.insert(name, (at, false));
            }
            Write::Delete(name) => {
                if let Some(pod) = asked.get_mut(&name) {
                    pod.1 = true;
                }
            }
            Write::DeleteAll => asked.values_mut().for_each(|a| a.1 = true),
            Write::Kwok(name) => {
                if let Some((created, false)) = asked.get(&name) {
                    stray.insert(
                        name,
                        format!("created at {created}, deleted by kwok at {at}, with no delete or eviction asked for in between"),
                    );
                }
            }
        }
    }
    stray
}

/// Who else deleted `secret` in `ns`, and when, by the API server's audit log (`<user agent>
/// (<user>) at <time>`): something other than the operator, which deletes a job's Secret only
/// once the job finishes.
pub fn secret_deleted_by_others(audit: &str, ns: &str, secret: &str, operator: &str) -> Vec<String> {
    audit
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| {
            e["objectRef"]["resource"] == "secrets"
                && e["objectRef"]["namespace"] == ns
                && e["objectRef"]["name"] == secret
                && e["verb"] == "delete"
                && e["stage"] == "ResponseComplete"
                && e["responseStatus"]["code"] == 200
                && e["user"]["username"] != operator
        })
        .map(|e| {
            format!(
                "{} ({}) at {}",
                e["userAgent"].as_str().unwrap_or_default(),
                e["user"]["username"].as_str().unwrap_or_default(),
                e["stageTimestamp"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn pod(name: &str, uid: &str, index: &str, attempt: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {
            "name": name, "namespace": "ns", "uid": uid,
            "labels": {JOB: "pi", RJOB: "node", JOB_INDEX: "0", INDEX: index, ATTEMPT: attempt},
            "ownerReferences": [{"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                "name": "pi", "uid": "job-uid", "controller": true}],
        }}))
        .expect("pod")
    }

    #[test]
    fn a_slot_filled_twice_at_once_is_a_violation_but_one_after_another_is_not() {
        let mut r = Recorder::default();
        r.pod(&Event::Apply(pod("pi-node-0-0", "a", "0", "0")));
        r.pod(&Event::Delete(pod("pi-node-0-0", "a", "0", "0")));
        r.pod(&Event::Apply(pod("pi-node-0-0", "b", "0", "1")));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.restarts("ns", "job-uid"), 1);
        // A second pod for index 0 under another name while b lives: broken on purpose.
        r.pod(&Event::Apply(pod("pi-node-0-0-dup", "c", "0", "1")));
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
    }

    #[test]
    fn a_relist_forgets_pods_deleted_while_the_watch_was_down() {
        let mut r = Recorder::default();
        r.pod(&Event::Apply(pod("pi-node-0-0", "a", "0", "0")));
        r.pod(&Event::Init);
        r.pod(&Event::InitDone);
        r.pod(&Event::Apply(pod("pi-node-0-0", "b", "0", "1")));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn a_changed_key_is_a_violation_and_its_bytes_are_not_printed() {
        let secret = |data: &str| -> Secret {
            let mut s: Secret = serde_json::from_value(json!({"metadata": {
                "name": "pi-mpi-ssh-auth", "namespace": "ns",
                "ownerReferences": [{"apiVersion": "v", "kind": "TrainJob", "name": "pi",
                    "uid": "job-uid", "controller": true}],
            }}))
            .expect("secret");
            s.data = Some(BTreeMap::from([(
                "ssh-privatekey".to_string(),
                ByteString(data.as_bytes().to_vec()),
            )]));
            s
        };
        let mut r = Recorder::default();
        r.secret(&Event::Apply(secret("first")));
        r.secret(&Event::Apply(secret("first")));
        assert!(r.violations.is_empty());
        r.secret(&Event::Apply(secret("second")));
        assert_eq!(r.violations.len(), 1);
        assert!(!r.violations[0].contains("second") && !r.violations[0].contains("first"));
    }

    #[test]
    fn only_a_kwok_delete_nobody_asked_for_is_stray() {
        let line = |at: &str, verb: &str, name: Option<&str>, agent: &str, sub: Option<&str>, uri: &str| {
            json!({"stage": "ResponseComplete", "stageTimestamp": format!("2026-01-01T00:00:{at}Z"),
                "verb": verb, "userAgent": agent, "requestURI": uri, "responseStatus": {"code": 200},
                "objectRef": {"resource": "pods", "namespace": "ns", "name": name, "subresource": sub}})
            .to_string()
        };
        let op = "trainjob-operator/0.1.0";
        let kwok = "kwok/v0.8.0";
        let collection = "/api/v1/namespaces/ns/pods?labelSelector=trainer.kubeflow.org%2Ftrainjob-name%3Dpi";
        let log = [
            // Created, deleted by the operator, then by kwok: the kubelet's part, not stray.
            line("01.000000", "create", Some("pi-node-0-0"), op, None, ""),
            line("02.000000", "delete", Some("pi-node-0-0"), op, None, ""),
            line("03.000000", "delete", Some("pi-node-0-0"), kwok, None, ""),
            // Its successor, deleted by kwok with nobody asking: stray.
            line("04.000000", "create", Some("pi-node-0-0"), op, None, ""),
            line("05.000000", "delete", Some("pi-node-0-0"), kwok, None, ""),
            // Evicted, or deleted with the whole job's pods: not stray.
            line("06.000000", "create", Some("pi-node-0-1"), op, None, ""),
            line(
                "07.000000",
                "create",
                Some("pi-node-0-1"),
                "admin",
                Some("eviction"),
                "",
            ),
            line("08.000000", "delete", Some("pi-node-0-1"), kwok, None, ""),
            line("09.000000", "create", Some("pi-launcher-0-0"), op, None, ""),
            line("10.000000", "deletecollection", None, op, None, collection),
            line("11.000000", "delete", Some("pi-launcher-0-0"), kwok, None, ""),
            // Another job's pods are another matter.
            line("12.000000", "create", Some("pie-node-0-0"), op, None, ""),
            line("13.000000", "delete", Some("pie-node-0-0"), kwok, None, ""),
            line("14.000000", "create", Some("pi-node-0-2"), op, None, ""),
            line(
                "15.000000",
                "deletecollection",
                None,
                op,
                None,
                &format!("{collection}e"),
            ),
            line("16.000000", "delete", Some("pi-node-0-2"), kwok, None, ""),
        ]
        .join("\n");
        let stray = stray_kwok_deletes(&log, "ns", "pi");
        assert_eq!(stray.keys().collect::<Vec<_>>(), ["pi-node-0-0", "pi-node-0-2"]);
        assert_eq!(
            stray["pi-node-0-0"],
            "created at 2026-01-01T00:00:04.000000Z, deleted by kwok at 2026-01-01T00:00:05.000000Z, with no delete or eviction asked for in between"
        );
    }

    #[test]
    fn secret_deletes_by_others_than_the_operator_are_named() {
        let line = |user: &str, agent: &str, name: &str, code: u16| {
            json!({"stage": "ResponseComplete", "verb": "delete", "userAgent": agent,
                "stageTimestamp": "2026-01-01T00:00:01.000000Z",
                "user": {"username": user}, "responseStatus": {"code": code},
                "objectRef": {"resource": "secrets", "namespace": "ns", "name": name}})
            .to_string()
        };
        let log = [
            line("op", "trainjob-operator", "pi-mpi-ssh-auth", 200),
            line(
                "admin",
                "kube-controller-manager/v1.36 (gc)",
                "pi-mpi-ssh-auth",
                200,
            ),
            line("admin", "kubectl", "pi-mpi-ssh-auth", 404),
            line("admin", "kubectl", "other-mpi-ssh-auth", 200),
        ]
        .join("\n");
        assert_eq!(
            secret_deleted_by_others(&log, "ns", "pi-mpi-ssh-auth", "op"),
            ["kube-controller-manager/v1.36 (gc) (admin) at 2026-01-01T00:00:01.000000Z"]
        );
    }

    #[test]
    fn objects_whose_owner_is_gone_are_orphans() {
        let owned = pod("a", "a", "0", "0").metadata;
        let mut ownerless = owned.clone();
        ownerless.owner_references = None;
        let live = BTreeSet::from(["job-uid".to_string()]);
        assert!(orphans([("Pod", &owned)], &live).is_empty());
        assert_eq!(
            orphans([("Pod", &owned), ("Pod", &ownerless)], &BTreeSet::new()).len(),
            2
        );
    }
}
