//! Apply: writes what the build step made (`desired`), in order. At once, since none depends on another: the
//! runtime snapshot, the SSH Secret, the hostfile, the Service and the NetworkPolicy. Then the
//! status (so a restart is counted before its pods go), the finished job's key, deletions, the
//! gang's objects, and the pods. The status is server-side applied under one field manager, and
//! so are the hostfile and Service when they drifted (created when the watch cache shows none);
//! everything else is created, and "already exists" counts as success where the object is the
//! job's. A pod is never applied: an update would undo changes others are allowed to make, such
//! as Kueue removing scheduling gates.

mod pods;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::scheduling::v1alpha2::{PodGroup, Workload};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Context;
use crate::api::{TrainJob, TrainJobStatus};
use crate::desired::{self, Key, Objects, Updates, Write, gang::Plugin};
use crate::names::{self, OwnerError};
use crate::reasons;

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error while {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the API server rejected {kind} {name}: {message}; fix the runtime's pod template or the TrainJob fields it comes from, then re-create the TrainJob"
    )]
    Rejected {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error(
        "the runtime asks for gang scheduling with spec.podGroupPolicy.{policy} but this cluster does not serve {api}: {fix}, or use a runtime without it"
    )]
    GangUnavailable {
        policy: &'static str,
        api: &'static str,
        fix: &'static str,
    },
    /// A pod the job needs exists and is not the job's.
    #[error(transparent)]
    Owner(#[from] OwnerError),
}

impl Error {
    /// The `Failed` reason when the error cannot heal without the user.
    pub fn permanent(&self) -> Option<&'static str> {
        match self {
            Error::Rejected { .. } => Some(reasons::OBJECT_REJECTED),
            Error::GangUnavailable { .. } => Some(reasons::GANG_UNAVAILABLE),
            Error::Owner(e) => e.permanent(),
            Error::Kube { .. } => None,
        }
    }

    /// Stable label for the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "write_kube",
            Error::Rejected { .. } => "object_rejected",
            Error::GangUnavailable { .. } => "gang_unavailable",
            Error::Owner(e) => e.label(),
        }
    }
}

/// Classifies a failed write: the API server calling the object invalid (422) or malformed
/// (400) will say the same next time; anything else may heal.
fn write_err(kind: &'static str, name: &str, action: String) -> impl FnOnce(kube::Error) -> Error {
    let name = name.to_string();
    move |source| match source {
        // 403 from quota admission for a pod without the requests a quota needs: also final.
        kube::Error::Api(status)
            if matches!(status.code, 400 | 422)
                || (status.code == 403 && status.message.contains("must specify")) =>
        {
            Error::Rejected {
                kind,
                name,
                message: status.message.clone(),
            }
        }
        source => Error::Kube { action, source },
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn apply_params() -> PatchParams {
    PatchParams::apply(names::FIELD_MANAGER).force()
}

fn create_params() -> PostParams {
    PostParams {
        field_manager: Some(names::FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Pod writes in flight at once, across all reconciles (see [`Context::writes`]).
pub const MAX_POD_WRITES: usize = 64;

/// Writes `objects` and `updates` for `job`, in the order of the module documentation.
pub async fn apply(job: &TrainJob, ctx: &Context, objects: &Objects, updates: &Updates) -> Result<(), Error> {
    let ns = job.namespace().unwrap_or_default();
    let snapshot = async {
        // The snapshot is created, never applied: one that exists is read and checked by the
        // next reconcile, so this one fails and is retried.
        if let Some(cm) = &objects.snapshot {
            let name = cm.name_any();
            Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
                .create(&create_params(), cm)
                .await
                .map_err(write_err("ConfigMap", &name, "freezing the runtime".into()))?;
        }
        Ok(())
    };
    let secret = async {
        let Some(secret) = &objects.secret else {
            return Ok(());
        };
        // One that exists already is someone else's: the next reconcile reads it and checks.
        if let Some(created) = create(ctx, &ns, secret, "Secret", "creating the SSH Secret").await? {
            tracing::info!(job = %job.name_any(), namespace = %ns, "created SSH Secret");
            ctx.memory
                .secret_exists(job, created.metadata.uid.as_deref().unwrap_or_default());
        }
        Ok(())
    };
    let hostfile = async {
        let Some(cm) = &objects.hostfile else {
            return Ok(());
        };
        write(ctx, &ns, cm, "ConfigMap", "writing the hostfile ConfigMap").await
    };
    let service = async {
        let Some(svc) = &objects.service else {
            return Ok(());
        };
        write(ctx, &ns, svc, "Service", "writing the headless Service").await
    };
    // Before the first pod, so no pod of the job is ever reachable from outside it.
    let policy = async {
        let Some(policy) = &objects.network_policy else {
            return Ok(());
        };
        create::<NetworkPolicy>(
            ctx,
            &ns,
            policy,
            "NetworkPolicy",
            "creating the job's NetworkPolicy",
        )
        .await
        .map(|_| ())
    };
    // Before the first pod too: a pod whose claim does not exist yet waits unschedulable. One
    // that exists is the job's from an earlier reconcile, or one it retained from an earlier
    // run of the same name, which it uses as JobSet does.
    let claims = futures::future::try_join_all(objects.claims.iter().map(|claim| {
        create::<PersistentVolumeClaim>(
            ctx,
            &ns,
            claim,
            "PersistentVolumeClaim",
            "creating a volume claim",
        )
    }));
    futures::try_join!(snapshot, secret, hostfile, service, policy, claims)?;
    if let Some(status) = &updates.status {
        write_status(job, ctx, status).await?;
    }
    match updates.key {
        Key::Keep => {}
        Key::Forget => ctx.memory.retire_key(job),
        Key::Delete => {
            delete_secret(job, ctx).await?;
            ctx.memory.retire_key(job);
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    pods::delete(job, ctx, &pods, &updates.delete).await?;
    // The gang's objects come before its first member.
    if let Some(gang) = &objects.gang {
        create_gang(ctx, &ns, gang).await?;
    }
    if let Some((plugin, group)) = &objects.plugin_group {
        create_plugin_pod_group(ctx, &ns, *plugin, group).await?;
    }
    pods::create(job, ctx, &pods, &objects.pods).await
}

/// A namespaced object this operator writes through a typed `Api`.
trait Child:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Child for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug
{
}

/// Creates `object`: what the API server made of it, `None` when it existed already.
async fn create<K>(
    ctx: &Context,
    ns: &str,
    object: &K,
    kind: &'static str,
    action: &str,
) -> Result<Option<K>, Error>
where
    K: Child,
{
    let name = object.meta().name.clone().unwrap_or_default();
    match Api::<K>::namespaced(ctx.client.clone(), ns)
        .create(&create_params(), object)
        .await
    {
        Ok(created) => Ok(Some(created)),
        Err(e) if is_status(&e, 409) => Ok(None),
        Err(e) => Err(write_err(kind, &name, action.into())(e)),
    }
}

/// Creates or applies `object` as `write` says. A create that finds the object there already
/// (made by an earlier reconcile the watch has not shown yet) applies it instead, as before the
/// cache knew of it.
async fn write<K>(
    ctx: &Context,
    ns: &str,
    write: &Write<K>,
    kind: &'static str,
    action: &str,
) -> Result<(), Error>
where
    K: Child,
{
    if let Write::Create(object) = write
        && create(ctx, ns, object, kind, action).await?.is_some()
    {
        return Ok(());
    }
    server_side(ctx, ns, write.object(), kind, action).await
}

/// Server-side applies `object` under the operator's field manager.
async fn server_side<K>(
    ctx: &Context,
    ns: &str,
    object: &K,
    kind: &'static str,
    action: &str,
) -> Result<(), Error>
where
    K: Child,
{
    let name = object.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(ctx.client.clone(), ns)
        .patch(&name, &apply_params(), &Patch::Apply(object))
        .await
        .map(|_| ())
        .map_err(write_err(kind, &name, action.into()))
}

/// Writes `status` with server-side apply on the status subresource. Never `trainerStatus`:
/// the status server owns that under its own field manager, and a copy written from this
/// reconcile's (older) view of the job would take it over and later turn it back.
async fn write_status(job: &TrainJob, ctx: &Context, status: &TrainJobStatus) -> Result<(), Error> {
    let api: Api<TrainJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let ours = TrainJobStatus {
        trainer_status: None,
        ..status.clone()
    };
    let patch =
        json!({"apiVersion": TrainJob::api_version(&()), "kind": TrainJob::kind(&()), "status": ours});
    api.patch_status(&job.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Kube {
            action: "writing status".into(),
            source,
        })?;
    ctx.memory.status_written(job);
    if desired::finishing(job, status) {
        ctx.memory.finished(job);
    }
    Ok(())
}

/// Creates the Workload, then the PodGroup (admission checks that its Workload exists), before
/// the first worker. Both are immutable: ones that exist are left as they are.
async fn create_gang(ctx: &Context, ns: &str, gang: &desired::gang::Gang) -> Result<(), Error> {
    let name = gang.workload.name_any();
    let missing = || Error::GangUnavailable {
        policy: "workload",
        api: "scheduling.k8s.io/v1alpha2 Workloads and PodGroups",
        fix: "enable the GenericWorkload and GangScheduling feature gates and --runtime-config=scheduling.k8s.io/v1alpha2=true",
    };
    let result = Api::<Workload>::namespaced(ctx.client.clone(), ns)
        .create(&create_params(), &gang.workload)
        .await;
    created("Workload", &name, result, missing)?;
    let result = Api::<PodGroup>::namespaced(ctx.client.clone(), ns)
        .create(&create_params(), &gang.pod_group)
        .await;
    created("PodGroup", &name, result, missing)
}

/// Creates the scheduler plugin's PodGroup before the first member. One that exists is left as
/// it is.
async fn create_plugin_pod_group(
    ctx: &Context,
    ns: &str,
    plugin: Plugin,
    group: &DynamicObject,
) -> Result<(), Error> {
    let name = group.name_any();
    let result = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &plugin.api())
        .create(&create_params(), group)
        .await;
    created("PodGroup", &name, result, || Error::GangUnavailable {
        policy: plugin.policy(),
        api: plugin.api_name(),
        fix: plugin.install_hint(),
    })
}

/// A create that found the object already there succeeded; a 404 means the API is not served.
fn created<T>(
    kind: &'static str,
    name: &str,
    result: kube::Result<T>,
    missing: impl FnOnce() -> Error,
) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) if is_status(&e, 404) => Err(missing()),
        Err(e) => Err(write_err(kind, name, format!("creating {kind} {name}"))(e)),
    }
}

/// Deletes the job's SSH Secret: a key lives no longer than its job, and the launcher kept for
/// `kubectl logs` has finished with it. Only a Secret this job owns, and only that very object
/// (a uid precondition), so a Secret someone else put under the name is never touched. The uid
/// is the one this run created or checked, else read now.
async fn delete_secret(job: &TrainJob, ctx: &Context) -> Result<(), Error> {
    let name = names::ssh_secret(&job.name_any());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let uid = match ctx.memory.secret_uid(job) {
        Some(uid) => uid,
        None => {
            let secret = api.get_opt(&name).await.map_err(|source| Error::Kube {
                action: format!("reading Secret {name}"),
                source,
            })?;
            let Some(secret) = secret else {
                return Ok(());
            };
            if !names::controlled_by(&secret.metadata, job.metadata.uid.as_deref().unwrap_or_default()) {
                return Ok(());
            }
            secret.metadata.uid.unwrap_or_default()
        }
    };
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid),
            ..Default::default()
        }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        // Gone already, or replaced by another object since it was read.
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("deleting Secret {name}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        let status: kube::core::Status =
            serde_json::from_value(json!({"code": code, "message": message})).expect("status");
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn refusals_that_cannot_heal_are_permanent_and_the_rest_are_retried() {
        let classify = |code, message: &str| {
            write_err("pod", "pi-node-0-0", "creating".into())(api_error(code, message))
        };
        for (code, message) in [
            (422, "Pod \"pi-node-0-0\" is invalid"),
            (400, "bad request"),
            (
                403,
                "pods \"pi-launcher-0-0\" is forbidden: failed quota: team: must specify requests.cpu for: node",
            ),
        ] {
            let e = classify(code, message);
            assert_eq!(e.permanent(), Some(reasons::OBJECT_REJECTED), "{code} {message}");
            assert!(e.to_string().contains(message), "{e}");
        }
        for (code, message) in [
            (
                403,
                "pods \"x\" is forbidden: exceeded quota: team, requested: requests.cpu=4",
            ),
            (500, "etcdserver: request timed out"),
        ] {
            assert_eq!(classify(code, message).permanent(), None, "{code} {message}");
        }
    }
}
