//! Dereference: everything a reconcile reads before it decides, into an [`Observed`]. The
//! runtime (frozen in the job's snapshot, or fetched on the first reconcile), the SSH Secret,
//! the namespace's quotas before the first pods, the job's pods, hostfile ConfigMap and Service
//! from the watch caches, a failed launcher's log, and what the operator remembers of the job.
//! Reads only; `apply` does every write.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, ResourceQuota, Secret};
use k8s_openapi::api::scheduling::v1alpha2::PodGroup;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};

use super::Context;
use crate::api::TrainJob;
use crate::desired::{gang, snapshot};
use crate::names::{self, OwnerError, check_owner};
use crate::observed::Observed;
use crate::resolve::Runtime;
use crate::{lifecycle, reasons, resolve, runtimes};

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
    /// An object named after the job is not the job's.
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error(
        "the frozen runtime in ConfigMap {name} cannot be read ({reason}); it was edited by hand: re-create the TrainJob"
    )]
    SnapshotUnreadable { name: String, reason: String },
    #[error("the watches of {pending} have not listed everything yet")]
    CachesNotReady { pending: String },
}

impl Error {
    /// The `Failed` reason when the error cannot heal without the user; `None` when it is
    /// transient and worth retrying.
    pub fn permanent(&self) -> Option<&'static str> {
        match self {
            Error::Kube { .. } | Error::CachesNotReady { .. } => None,
            Error::Runtime(e) => e.permanent(),
            Error::Owner(e) => e.permanent(),
            Error::SnapshotUnreadable { .. } => Some(reasons::SNAPSHOT_UNREADABLE),
        }
    }

    /// Stable label for the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "read_kube",
            Error::Runtime(e) => e.label(),
            Error::Owner(e) => e.label(),
            Error::SnapshotUnreadable { .. } => "snapshot_unreadable",
            Error::CachesNotReady { .. } => "caches_not_ready",
        }
    }
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// Reads what a reconcile of `job` works from. The Secret, hostfile, Service, log and quotas
/// matter only to a job that is neither finished nor suspended.
pub async fn observe(job: &TrainJob, ctx: &Context) -> Result<Observed, Error> {
    caches_ready(ctx).await?;
    let active = !lifecycle::finished(job.status.as_ref()) && !job.spec.suspend.unwrap_or(false);
    let (ns, name) = (job.namespace().unwrap_or_default(), job.name_any());
    let (pods, foreign) = own_pods(job, ctx);
    let awaited = ctx.memory.awaited(job, &pods);
    // Before the first pods (of an attempt): the whole job is checked against the quotas.
    let first_pods = pods.is_empty() && awaited.is_empty();
    // The reads a new job needs (its snapshot, Secret and quotas are not cached) go at once.
    // Quotas are listed, not watched: a quota created just before the job must count.
    let key_and_quotas = async {
        match active {
            true => futures::try_join!(secret_exists(job, ctx, &ns, &name), async {
                match first_pods {
                    true => read_quotas(ctx, &ns).await.map(Some),
                    false => Ok(None),
                }
            }),
            false => Ok((false, None)),
        }
    };
    let ((runtime, fresh), (secret, quotas)) =
        futures::try_join!(runtime(job, ctx, &ns, &name), key_and_quotas)?;
    let hostfile = cached(&ctx.configmaps, &ns, &names::hostfile_configmap(&name));
    let service = cached(&ctx.services, &ns, &resolve::subdomain(job, &runtime.spec));
    if active {
        if let Some(cm) = &hostfile {
            check_owner(job, "ConfigMap", &cm.metadata)?;
        }
        if let Some(svc) = &service {
            check_owner(job, "Service", &svc.metadata)?;
        }
    }
    let failed_log = match failed_step(job, &pods).filter(|_| active) {
        Some((pod, container)) => failed_log(ctx, &ns, pod, container)
            .await
            .map(|log| (pod.to_string(), log)),
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
    let gang = match active && native_gang && unbound {
        true => gang_condition(ctx, &ns, &name).await,
        false => None,
    };
    let lost_nodes = lost_nodes(ctx, &pods);
    let awaited_claims: BTreeSet<String> = pods.iter().flat_map(|p| lifecycle::claims_awaited(p)).collect();
    let claims = match active {
        true => read_claims(ctx, &ns, awaited_claims).await?,
        false => BTreeMap::new(),
    };
    Ok(Observed {
        runtime,
        fresh,
        pods,
        foreign,
        awaited,
        secret,
        hostfile,
        service,
        failed_log,
        gang,
        quotas,
        lost_nodes,
        claims,
        status_hold: ctx.memory.status_wait(job),
        key_retired: ctx.memory.key_retired(job),
    })
}

/// The volume claims `names` in `ns`, as the API server has them (`None`: not found). Read only
/// while a pod waits for one, so they are not watched.
async fn read_claims(
    ctx: &Context,
    ns: &str,
    names: BTreeSet<String>,
) -> Result<BTreeMap<String, Option<PersistentVolumeClaim>>, Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let reads = names.into_iter().map(|name| {
        let api = api.clone();
        async move {
            let claim = api
                .get_opt(&name)
                .await
                .map_err(kube_err(format!("the PersistentVolumeClaim {ns}/{name}")))?;
            Ok::<_, Error>((name, claim))
        }
    });
    futures::future::try_join_all(reads)
        .await
        .map(BTreeMap::from_iter)
}

/// The nodes of `pods` that are not Ready, with why.
fn lost_nodes(ctx: &Context, pods: &[Arc<Pod>]) -> BTreeMap<String, String> {
    pods.iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .filter_map(|node| {
            let why = crate::nodes::not_ready(ctx.nodes.get(&ObjectRef::new(node))?.as_ref())?;
            Some((node.to_string(), why))
        })
        .collect()
}

/// Whether the job's SSH Secret exists. Secrets are not watched (the operator may only get the
/// ones it names): read once, then remembered.
async fn secret_exists(job: &TrainJob, ctx: &Context, ns: &str, name: &str) -> Result<bool, Error> {
    if ctx.memory.secret_known(job) {
        return Ok(true);
    }
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(&names::ssh_secret(name))
        .await
        .map_err(kube_err("the SSH Secret"))?;
    let Some(secret) = secret else {
        return Ok(false);
    };
    check_owner(job, "Secret", &secret.metadata)?;
    ctx.memory
        .secret_exists(job, secret.metadata.uid.as_deref().unwrap_or_default());
    Ok(true)
}

async fn read_quotas(ctx: &Context, ns: &str) -> Result<Vec<ResourceQuota>, Error> {
    let quotas = Api::<ResourceQuota>::namespaced(ctx.client.clone(), ns)
        .list(&Default::default())
        .await
        .map_err(kube_err("ResourceQuotas"))?;
    Ok(quotas.items)
}

/// The job's pods from the index, split into those the job controls (those this run deleted
/// shown as deleting, see [`Memory::deleting`]) and the others.
pub fn own_pods(job: &TrainJob, ctx: &Context) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    let (own, foreign) = ctx
        .pods
        .of(&job.namespace().unwrap_or_default(), &job.name_any())
        .into_iter()
        .partition(|p| names::controlled_by(&p.metadata, uid));
    (ctx.memory.deleting(job, own), foreign)
}

/// The `PodGroupScheduled` condition kube-scheduler writes on the job's PodGroup. Not watched (a
/// watch would fail on clusters that do not serve the API); `None` when it cannot be read, which
/// only makes the waiting message less specific.
async fn gang_condition(ctx: &Context, ns: &str, job: &str) -> Option<Condition> {
    let name = gang::pod_group_name(job);
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

/// The launcher or initializer pod of the current restart attempt that failed, with the
/// container whose log says why: the launcher's `node`, an initializer's step container.
fn failed_step<'a>(job: &TrainJob, pods: &'a [Arc<Pod>]) -> Option<(&'a str, &'static str)> {
    let attempt = job
        .status
        .as_ref()
        .and_then(|s| s.restarts)
        .unwrap_or(0)
        .to_string();
    pods.iter().find_map(|pod| {
        let labels = pod.metadata.labels.as_ref()?;
        let failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
        let container = match labels.get(crate::api::ANCESTOR_LABEL).map(String::as_str) {
            Some(crate::api::ANCESTOR_DATASET_INITIALIZER) => crate::api::ANCESTOR_DATASET_INITIALIZER,
            Some(crate::api::ANCESTOR_MODEL_INITIALIZER) => crate::api::ANCESTOR_MODEL_INITIALIZER,
            _ if labels.get(names::JOB_ROLE_LABEL).map(String::as_str) == Some(crate::api::LAUNCHER) => {
                crate::api::NODE
            }
            _ => return None,
        };
        let current = labels.get(names::RESTART_ATTEMPT_LABEL) == Some(&attempt);
        (failed && current).then_some((pod.metadata.name.as_deref()?, container))
    })
}

/// The tail of `container`'s log in `pod`; `None` when it cannot be read (the node is gone, or
/// the operator may not read logs), which only makes the failure message less specific. The
/// text is never logged (see `mpi::diagnose`, `lifecycle::failure`).
async fn failed_log(ctx: &Context, ns: &str, pod: &str, container: &str) -> Option<String> {
    let params = kube::api::LogParams {
        container: Some(container.into()),
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
            tracing::debug!(pod, error = %e, "could not read the failed pod's log");
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

/// The frozen runtime from `<job>-runtime-snapshot` (watch cache first, then the API server, so
/// a snapshot the cache has not seen yet is never frozen twice), else the referenced runtime,
/// fetched just now (`true`).
async fn runtime(job: &TrainJob, ctx: &Context, ns: &str, name: &str) -> Result<(Runtime, bool), Error> {
    let snapshot_name = names::runtime_snapshot(name);
    let frozen = match ctx.configmaps.get(&ObjectRef::new(&snapshot_name).within(ns)) {
        Some(cm) => Some(cm),
        None => Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
            .get_opt(&snapshot_name)
            .await
            .map_err(kube_err("the runtime snapshot"))?
            .map(Arc::new),
    };
    if let Some(cm) = frozen {
        check_owner(job, "ConfigMap", &cm.metadata)?;
        let runtime = snapshot::read(&cm).map_err(|reason| Error::SnapshotUnreadable {
            name: snapshot_name,
            reason,
        })?;
        return Ok((runtime, false));
    }
    let fetched = runtimes::fetch(&ctx.client, Some(&ctx.runtimes), job, ns).await?;
    Ok((fetched, true))
}
