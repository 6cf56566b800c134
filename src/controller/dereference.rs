//! Dereference: everything a reconcile reads before it decides. The runtime (frozen in the job's
//! snapshot, or fetched on the first reconcile), the SSH Secret, and the job's pods, hostfile
//! ConfigMap and Service from the watch caches. Reads only; `apply` does every write.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::scheduling::v1alpha2::PodGroup;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::Context;
use crate::api::{GROUP, TrainJob, TrainingRuntimeSpec};
use crate::{names, reasons, resolve, runtimes};

/// Why the inputs of a reconcile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error while reading {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Runtime(#[from] runtimes::LookupError),
    #[error(
        "{kind} {name} already exists and belongs to {owner}, not to this TrainJob: delete that {kind} and re-create the TrainJob, or give the TrainJob another name"
    )]
    Conflict {
        kind: &'static str,
        name: String,
        owner: String,
    },
    #[error(
        "{kind} {name} still belongs to an earlier TrainJob of the same name; waiting for the garbage collector to remove it"
    )]
    Leftover { kind: &'static str, name: String },
    #[error(
        "the frozen runtime in ConfigMap {name} cannot be read ({reason}); it was edited by hand: re-create the TrainJob"
    )]
    SnapshotUnreadable { name: String, reason: String },
    #[error("the watches of {pending} have not listed everything yet")]
    CachesNotReady { pending: String },
    #[error(
        "the SSH Secret {name} was deleted while the job's pods ran; they hold the only copy of its key, so new pods could not reach them: re-create the TrainJob"
    )]
    SecretDeleted { name: String },
}

impl Error {
    /// The `Failed` reason when the error cannot heal without the user; `None` when it is
    /// transient and worth retrying.
    pub fn permanent(&self) -> Option<&'static str> {
        match self {
            Error::Kube { .. } | Error::Leftover { .. } | Error::CachesNotReady { .. } => None,
            Error::Runtime(e) => e.permanent(),
            Error::Conflict { .. } => Some(reasons::OBJECT_CONFLICT),
            Error::SnapshotUnreadable { .. } => Some(reasons::SNAPSHOT_UNREADABLE),
            Error::SecretDeleted { .. } => Some(reasons::SECRET_DELETED),
        }
    }

    /// Stable label for the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "read_kube",
            Error::Runtime(e) => e.label(),
            Error::Conflict { .. } => "object_conflict",
            Error::Leftover { .. } => "leftover_object",
            Error::SnapshotUnreadable { .. } => "snapshot_unreadable",
            Error::CachesNotReady { .. } => "caches_not_ready",
            Error::SecretDeleted { .. } => "secret_deleted",
        }
    }
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// The runtime a job runs on.
pub struct Runtime {
    /// `Kind/name`, as messages and the snapshot name it.
    pub label: String,
    /// Its spec as frozen (or as fetched, when `fresh`).
    pub spec: TrainingRuntimeSpec,
    /// Fetched just now: `apply` freezes it before anything else.
    pub fresh: bool,
}

/// What one reconcile works from.
pub struct Inputs {
    /// The runtime.
    pub runtime: Runtime,
    /// The job's pods, from the pod index: those it controls.
    pub pods: Vec<Arc<Pod>>,
    /// Pods that carry the job's labels but are not its own (someone else's, or left from an
    /// earlier job of the same name): never counted or deleted.
    pub foreign: Vec<Arc<Pod>>,
    /// Whether the SSH Secret exists (read only for a job that is neither finished nor suspended).
    pub secret_exists: bool,
    /// The hostfile ConfigMap and the Service as last seen by the watches.
    pub hostfile: Option<Arc<ConfigMap>>,
    /// See `hostfile`.
    pub service: Option<Arc<Service>>,
    /// The tail of the current attempt's launcher log, once that launcher has failed.
    pub launcher_log: Option<String>,
    /// The native gang PodGroup's `PodGroupScheduled` condition, read while a member is unbound.
    pub gang: Option<Condition>,
}

/// Reads the inputs of `job`. `active`: the job is neither finished nor suspended, so its Secret,
/// hostfile and Service matter.
pub async fn inputs(job: &TrainJob, ctx: &Context, active: bool) -> Result<Inputs, Error> {
    caches_ready(ctx).await?;
    let (ns, name) = (job.namespace().unwrap_or_default(), job.name_any());
    let runtime = runtime(job, ctx, &ns, &name).await?;
    let hostfile = cached(&ctx.configmaps, &ns, &names::hostfile_configmap(&name));
    let service = cached(&ctx.services, &ns, &resolve::subdomain(job, &runtime.spec));
    let mut secret_exists = false;
    if active {
        if let Some(cm) = &hostfile {
            check_owner(job, "ConfigMap", &cm.metadata)?;
        }
        if let Some(svc) = &service {
            check_owner(job, "Service", &svc.metadata)?;
        }
        // Secrets are not watched (the operator may only get the ones it names): read once,
        // then remembered.
        secret_exists = ctx.memory.secret_known(job);
        if !secret_exists {
            let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&names::ssh_secret(&name))
                .await
                .map_err(kube_err("the SSH Secret"))?;
            if let Some(secret) = secret {
                check_owner(job, "Secret", &secret.metadata)?;
                ctx.memory.secret_exists(job);
                secret_exists = true;
            }
        }
    }
    let (pods, foreign) = own_pods(job, ctx);
    let launcher_log = match failed_launcher(job, &pods).filter(|_| active) {
        Some(pod) => launcher_log(ctx, &ns, pod).await,
        None => None,
    };
    let native_gang = runtime
        .spec
        .pod_group_policy
        .as_ref()
        .is_some_and(|p| p.workload.is_some());
    let unbound = pods
        .iter()
        .any(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()));
    let gang = if active && native_gang && unbound {
        gang_condition(ctx, &ns, &name).await
    } else {
        None
    };
    Ok(Inputs {
        runtime,
        pods,
        foreign,
        secret_exists,
        hostfile,
        service,
        launcher_log,
        gang,
    })
}

/// Whether the job's key is lost: its Secret is gone while some of its pods, which mounted the
/// Secret when they started, still run. A Secret is created before a job's first pod and deleted
/// only once it finishes, so someone else deleted it; a new key would reach new pods (a launcher
/// yet to come, replacements) but never the running ones.
pub fn key_lost(secret_exists: bool, pods: &[Arc<Pod>]) -> bool {
    !secret_exists
        && pods.iter().any(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
}

/// The job's pods from the index, split into those the job controls and the others.
pub fn own_pods(job: &TrainJob, ctx: &Context) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    ctx.pods
        .of(&job.namespace().unwrap_or_default(), &job.name_any())
        .into_iter()
        .partition(|p| names::controlled_by(&p.metadata, uid))
}

/// The `PodGroupScheduled` condition kube-scheduler writes on the job's PodGroup. Not watched (a
/// watch would fail on clusters that do not serve the API); `None` when it cannot be read, which
/// only makes the waiting message less specific.
async fn gang_condition(ctx: &Context, ns: &str, job: &str) -> Option<Condition> {
    let name = crate::gang::pod_group_name(job);
    match Api::<PodGroup>::namespaced(ctx.client.clone(), ns)
        .get_opt(&name)
        .await
    {
        Ok(group) => group?
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodGroupScheduled"),
        Err(e) => {
            tracing::debug!(pod_group = name, error = %e, "could not read the gang's PodGroup");
            None
        }
    }
}

/// Lines of a failed launcher's log worth reading: mpirun's ssh and DNS errors come last.
const LOG_TAIL_LINES: i64 = 50;

/// The launcher pod of the current restart attempt, if it has failed.
fn failed_launcher<'a>(job: &TrainJob, pods: &'a [Arc<Pod>]) -> Option<&'a str> {
    let attempt = job
        .status
        .as_ref()
        .and_then(|s| s.restarts)
        .unwrap_or(0)
        .to_string();
    pods.iter().find_map(|pod| {
        let labels = pod.metadata.labels.as_ref()?;
        let failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
        let launcher = labels.get(names::JOB_ROLE_LABEL).map(String::as_str) == Some(crate::api::LAUNCHER);
        let current = labels.get(names::RESTART_ATTEMPT_LABEL) == Some(&attempt);
        (failed && launcher && current)
            .then_some(pod.metadata.name.as_deref())
            .flatten()
    })
}

/// The tail of the launcher's `node` container log; `None` when it cannot be read (the node is
/// gone, or the operator may not read logs), which only makes the failure message less specific.
/// The text is matched, never logged or stored (see `lifecycle::diagnose`).
async fn launcher_log(ctx: &Context, ns: &str, pod: &str) -> Option<String> {
    let params = kube::api::LogParams {
        container: Some(crate::api::NODE.into()),
        tail_lines: Some(LOG_TAIL_LINES),
        limit_bytes: Some(64 * 1024),
        ..Default::default()
    };
    match Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .logs(pod, &params)
        .await
    {
        Ok(log) => Some(log),
        Err(e) => {
            tracing::debug!(pod, error = %e, "could not read the failed launcher's log");
            None
        }
    }
}

/// Waits (bounded) until every watch cache has listed everything once. A freshly started
/// operator that decided from a half-filled cache would recreate pods that exist, or take a
/// worker it has not seen yet for a lost one.
async fn caches_ready(ctx: &Context) -> Result<(), Error> {
    tokio::time::timeout(std::time::Duration::from_secs(30), ctx.listed.all())
        .await
        .map_err(|_| Error::CachesNotReady {
            pending: ctx.listed.pending().join(", "),
        })
}

fn cached<K>(store: &Store<K>, ns: &str, name: &str) -> Option<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(ns))
}

/// Who owns an object named after the job.
pub fn check_owner(job: &TrainJob, kind: &'static str, meta: &ObjectMeta) -> Result<(), Error> {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    if names::controlled_by(meta, job.metadata.uid.as_deref().unwrap_or_default()) {
        return Ok(());
    }
    let name = meta.name.clone().unwrap_or_default();
    let earlier = |o: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference| {
        o.kind == TrainJob::kind(&())
            && o.api_version.starts_with(GROUP)
            && Some(&o.name) == job.metadata.name.as_ref()
    };
    if refs.iter().any(|o| earlier(&o)) {
        return Err(Error::Leftover { kind, name });
    }
    let owner = refs
        .first()
        .map(|o| format!("{} {}", o.kind, o.name))
        .unwrap_or_else(|| "no TrainJob (it has no owner)".into());
    Err(Error::Conflict { kind, name, owner })
}

/// The frozen runtime from `<job>-runtime-snapshot` (watch cache first, then the API server, so
/// a snapshot the cache has not seen yet is never frozen twice), else the referenced runtime.
async fn runtime(job: &TrainJob, ctx: &Context, ns: &str, name: &str) -> Result<Runtime, Error> {
    let snapshot_name = names::runtime_snapshot(name);
    let snapshot = match ctx.configmaps.get(&ObjectRef::new(&snapshot_name).within(ns)) {
        Some(cm) => Some((*cm).clone()),
        None => Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
            .get_opt(&snapshot_name)
            .await
            .map_err(kube_err("the runtime snapshot"))?,
    };
    if let Some(cm) = snapshot {
        check_owner(job, "ConfigMap", &cm.metadata)?;
        let unreadable = |reason: String| Error::SnapshotUnreadable {
            name: snapshot_name.clone(),
            reason,
        };
        let data = cm.data.unwrap_or_default();
        let (Some(spec), Some(label)) = (data.get("runtime"), data.get("name")) else {
            return Err(unreadable("keys runtime and name are required".into()));
        };
        let spec = serde_json::from_str(spec).map_err(|e| unreadable(e.to_string()))?;
        return Ok(Runtime {
            label: label.clone(),
            spec,
            fresh: false,
        });
    }

    let fetched = runtimes::fetch(&ctx.client, Some(&ctx.runtimes), job, ns).await?;
    Ok(Runtime {
        label: fetched.label,
        spec: fetched.spec,
        fresh: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(phase: &str, deleting: bool) -> Arc<Pod> {
        let mut meta = json!({"name": "pi-node-0-0"});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(json!({"metadata": meta, "status": {"phase": phase}})).expect("pod"))
    }

    #[test]
    fn a_key_is_lost_only_when_its_secret_is_gone_while_a_pod_still_runs() {
        let running = [pod("Running", false)];
        assert!(key_lost(false, &running));
        assert!(!key_lost(true, &running));
        assert!(!key_lost(false, &[]), "a new job gets its first key");
        assert!(key_lost(false, &[pod("Pending", false)]));
        assert!(
            !key_lost(
                false,
                &[
                    pod("Succeeded", false),
                    pod("Failed", false),
                    pod("Running", true)
                ]
            ),
            "finished or going pods need no key"
        );
    }
}
