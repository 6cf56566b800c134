//! Apply: carries out a [`Decision`]. In order: at once, freeze a freshly fetched runtime, create
//! the SSH Secret and NetworkPolicy once, and keep the hostfile and Service as built (written
//! only when the cache shows drift); then write the status (so a restart is counted before its
//! pods go), delete, and create pods. The hostfile, Service and status are server-side applied
//! under one field manager; the snapshot, Secret and pods are created, tolerating "already
//! exists".

use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::scheduling::v1alpha2::{PodGroup, Workload};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Context;
use super::dereference::Inputs;
use crate::api::{TrainJob, TrainJobStatus};
use crate::gang::{self, Gang};
use crate::lifecycle::{self, Decision, Phase};
use crate::plan::Plan;
use crate::ssh::{KeyPair, SshError};
use crate::{hostfile, names, netpol, pods, quota, reasons};

/// Why a decision could not be carried out.
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
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("SSH key generation task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("encoding the runtime snapshot: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(
        "the runtime asks for gang scheduling with spec.podGroupPolicy.{policy} but this cluster does not serve {api}: {fix}, or use a runtime without it"
    )]
    GangUnavailable {
        policy: &'static str,
        api: &'static str,
        fix: &'static str,
    },
    #[error("{0}")]
    QuotaExceeded(String),
    /// A pod the job needs exists and is not the job's.
    #[error(transparent)]
    Owner(#[from] super::dereference::Error),
}

impl Error {
    /// The `Failed` reason when the error cannot heal without the user.
    pub fn permanent(&self) -> Option<&'static str> {
        match self {
            Error::Rejected { .. } => Some(reasons::OBJECT_REJECTED),
            Error::GangUnavailable { .. } => Some(reasons::GANG_UNAVAILABLE),
            Error::QuotaExceeded(_) => Some(reasons::QUOTA_EXCEEDED),
            Error::Owner(e) => e.permanent(),
            Error::Kube { .. } | Error::Ssh(_) | Error::Join(_) | Error::Encode(_) => None,
        }
    }

    /// Stable label for the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "write_kube",
            Error::Rejected { .. } => "object_rejected",
            Error::Ssh(_) | Error::Join(_) => "ssh_keygen",
            Error::Encode(_) => "encode_snapshot",
            Error::GangUnavailable { .. } => "gang_unavailable",
            Error::QuotaExceeded(_) => "quota_exceeded",
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

/// Carries out `decision` for `job`. Returns how soon to come back when a status that differs
/// only in pod counts was held back (see [`super::memory`]).
pub async fn decision(
    job: &TrainJob,
    ctx: &Context,
    plan: &Plan,
    inputs: &Inputs,
    decision: &Decision,
) -> Result<Option<std::time::Duration>, Error> {
    let ns = job.namespace().unwrap_or_default();
    let first_pods = !decision.create.is_empty() && inputs.pods.is_empty();
    if first_pods {
        check_quota(job, ctx, plan, &ns, decision.status.restarts.unwrap_or(0)).await?;
    }
    // The job's other children do not depend on each other: written at once, one round trip
    // instead of five. All are in place before the first pod.
    let children = decision.phase.is_some_and(Phase::needs_children);
    let freeze = async {
        if inputs.runtime.fresh {
            freeze(job, ctx, &ns, inputs).await
        } else {
            Ok(())
        }
    };
    let secret = async {
        if children && !inputs.secret_exists {
            create_secret(job, ctx, &ns).await
        } else {
            Ok(())
        }
    };
    let hostfile = async {
        let cm = hostfile::configmap(job, plan);
        if !children
            || inputs
                .hostfile
                .as_ref()
                .is_some_and(|cached| cached.data == cm.data)
        {
            return Ok(());
        }
        let name = names::hostfile_configmap(&job.name_any());
        Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &apply_params(), &Patch::Apply(&cm))
            .await
            .map(|_| ())
            .map_err(write_err(
                "ConfigMap",
                &name,
                "applying the hostfile ConfigMap".into(),
            ))
    };
    let service = async {
        let svc = pods::service(job, plan);
        if !children
            || inputs
                .service
                .as_ref()
                .is_some_and(|cached| service_matches(cached, &svc))
        {
            return Ok(());
        }
        Api::<Service>::namespaced(ctx.client.clone(), &ns)
            .patch(&plan.subdomain, &apply_params(), &Patch::Apply(&svc))
            .await
            .map(|_| ())
            .map_err(write_err(
                "Service",
                &plan.subdomain,
                "applying the headless Service".into(),
            ))
    };
    // Before the first pod, so no pod of the job is ever reachable from outside it.
    let policy = async {
        if !(ctx.settings.network_policies && first_pods) {
            return Ok(());
        }
        let policy = netpol::network_policy(job, plan);
        match Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &ns)
            .create(&create_params(), &policy)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(write_err(
                "NetworkPolicy",
                &job.name_any(),
                "creating the job's NetworkPolicy".into(),
            )(e)),
        }
    };
    futures::try_join!(freeze, secret, hostfile, service, policy)?;
    let mut held = None;
    if job.status.as_ref() != Some(&decision.status) {
        match ctx.memory.status_wait(job) {
            Some(wait) if counts_only(job.status.as_ref(), &decision.status) => held = Some(wait),
            _ => {
                write_status(job, ctx, &decision.status).await?;
                ctx.memory.status_written(job);
            }
        }
    }
    if lifecycle::finished(Some(&decision.status)) {
        retire_key(job, ctx, &decision.status).await?;
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    delete_pods(job, ctx, &pods, inputs, &decision.delete).await?;
    // The gang's objects come before its first member.
    let members = decision
        .create
        .iter()
        .any(|(i, _)| gang::member(plan, plan.jobs[*i].role));
    if let Some(gang) = gang::gang(job, plan).filter(|_| members) {
        create_gang(ctx, &ns, gang).await?;
    }
    let attempt = decision.status.restarts.unwrap_or(0);
    if members && gang::plugin_members(plan).is_some() {
        create_plugin_pod_group(job, ctx, plan, &ns, attempt).await?;
    }
    let wanted: Vec<Pod> = decision
        .create
        .iter()
        .map(|(i, at)| pods::pod(job, plan, &plan.jobs[*i], *at, attempt))
        .collect();
    create_pods(job, ctx, &pods, wanted).await?;
    Ok(held)
}

/// Whether `new` differs from `old` in `jobsStatus` alone: pod counts, no condition or restart.
fn counts_only(old: Option<&TrainJobStatus>, new: &TrainJobStatus) -> bool {
    let old = TrainJobStatus {
        jobs_status: new.jobs_status.clone(),
        ..old.cloned().unwrap_or_default()
    };
    old == *new
}

/// Creates pods in batches that double while every create succeeds (1, 2, 4, ...), as the Job
/// controller does: a job's pods appear about as fast as the API server takes them, while a
/// create that will fail for all of them (an invalid template, a quota) fails once, not
/// hundreds of times. [`Context::writes`] bounds the creates in flight across all jobs.
async fn create_pods(job: &TrainJob, ctx: &Context, api: &Api<Pod>, wanted: Vec<Pod>) -> Result<(), Error> {
    let mut wanted = wanted.into_iter().peekable();
    let mut batch = 1;
    while wanted.peek().is_some() {
        let creates: Vec<_> = wanted
            .by_ref()
            .take(batch)
            .map(|pod| create_pod(job, ctx, api, pod))
            .collect();
        futures::future::join_all(creates)
            .await
            .into_iter()
            .collect::<Result<(), Error>>()?;
        batch = (batch * 2).min(MAX_CREATE_BATCH);
    }
    Ok(())
}

/// Creates one pod of `job`, and awaits it in the watch (see `expectations`).
async fn create_pod(job: &TrainJob, ctx: &Context, api: &Api<Pod>, pod: Pod) -> Result<(), Error> {
    let _permit = ctx.writes.acquire().await;
    let name = pod.metadata.name.clone().unwrap_or_default();
    // Create, never apply: a pod that exists already (the watch has not shown it yet) must not
    // be updated, e.g. re-gated after Kueue removed its scheduling gates.
    match api.create(&create_params(), &pod).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 409) => {
            // Ours, not shown by the watch yet; or someone else's (without the labels the
            // watch selects, it never would be), which the job must not wait for.
            let existing =
                api.get_opt(&name)
                    .await
                    .map_err(write_err("pod", &name, format!("reading pod {name}")))?;
            if let Some(existing) = existing {
                super::dereference::check_owner(job, "Pod", &existing.metadata)?;
            }
        }
        Err(e) => return Err(write_err("pod", &name, format!("creating pod {name}"))(e)),
    }
    ctx.expected
        .created(job.metadata.uid.as_deref().unwrap_or_default(), [name]);
    Ok(())
}

/// The largest batch of one job's creates; [`Context::writes`] bounds all jobs together.
const MAX_CREATE_BATCH: usize = 64;

/// Deletes the pods named in `delete`. When they are exactly the job's live workers (a job that
/// completed or failed), one collection delete removes them all instead of one request each.
async fn delete_pods(
    job: &TrainJob,
    ctx: &Context,
    api: &Api<Pod>,
    inputs: &Inputs,
    delete: &[String],
) -> Result<(), Error> {
    // A collection delete selects by label, and a pod that is not the job's may carry its labels.
    if delete.len() > 1 && inputs.foreign.is_empty() {
        let live_workers: std::collections::BTreeSet<&str> = inputs
            .pods
            .iter()
            .filter(|p| live_worker(p))
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        let deleting: std::collections::BTreeSet<&str> = delete.iter().map(String::as_str).collect();
        // Selected by attempt too: the next attempt's pods may exist already, unseen.
        let attempts: std::collections::BTreeSet<&str> = inputs
            .pods
            .iter()
            .filter(|p| live_worker(p))
            .filter_map(|p| p.labels().get(names::RESTART_ATTEMPT_LABEL).map(String::as_str))
            .collect();
        if let (true, [attempt]) = (live_workers == deleting, Vec::from_iter(attempts).as_slice()) {
            let params = kube::api::ListParams::default()
                .labels(&format!(
                    "{}={},{}=node,{}={attempt}",
                    names::TRAINJOB_NAME_LABEL,
                    job.name_any(),
                    names::JOB_ROLE_LABEL,
                    names::RESTART_ATTEMPT_LABEL,
                ))
                .fields("status.phase!=Succeeded,status.phase!=Failed");
            return api
                .delete_collection(&DeleteParams::background(), &params)
                .await
                .map(|_| ())
                .map_err(|source| Error::Kube {
                    action: format!("deleting the workers of {}", job.name_any()),
                    source,
                });
        }
    }
    let deletes: Vec<_> = inputs
        .pods
        .iter()
        .filter(|p| p.metadata.name.as_ref().is_some_and(|n| delete.contains(n)))
        .map(|pod| delete_pod(api, pod, ctx))
        .collect();
    futures::future::join_all(deletes).await.into_iter().collect()
}

/// A worker pod that is Pending or Running and not being deleted: what a collection delete of
/// the job's unfinished workers selects (it also re-deletes pods on their way out, harmlessly).
fn live_worker(pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let role = labels
        .and_then(|l| l.get(names::JOB_ROLE_LABEL))
        .map(String::as_str);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    role == Some("node")
        && pod.metadata.deletion_timestamp.is_none()
        && matches!(phase, Some("Pending" | "Running"))
}

/// Before the job's first pod: does the whole job fit in the namespace's ResourceQuotas?
async fn check_quota(
    job: &TrainJob,
    ctx: &Context,
    plan: &Plan,
    ns: &str,
    attempt: i32,
) -> Result<(), Error> {
    let quotas = Api::<ResourceQuota>::namespaced(ctx.client.clone(), ns)
        .list(&Default::default())
        .await
        .map_err(|source| Error::Kube {
            action: "listing ResourceQuotas".into(),
            source,
        })?;
    if quotas.items.is_empty() {
        return Ok(());
    }
    let all = pods::of_jobs(job, plan, attempt, |_| true);
    match quota::check(&quotas.items, &quota::demand(&all)) {
        Some(message) => Err(Error::QuotaExceeded(message)),
        None => Ok(()),
    }
}

/// Creates the Workload, then the PodGroup (admission checks that its Workload exists), before
/// the first worker. Both are immutable: ones that exist are left as they are.
async fn create_gang(ctx: &Context, ns: &str, gang: Gang) -> Result<(), Error> {
    let name = gang.workload.metadata.name.clone().unwrap_or_default();
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

/// Creates the scheduler plugin's PodGroup before the first member: every member counted, their
/// requests summed. One that exists is left as it is.
async fn create_plugin_pod_group(
    job: &TrainJob,
    ctx: &Context,
    plan: &Plan,
    ns: &str,
    attempt: i32,
) -> Result<(), Error> {
    let members = pods::of_jobs(job, plan, attempt, |rjob| gang::member(plan, rjob.role));
    let Some((plugin, group)) = gang::plugin_pod_group(job, plan, &members) else {
        return Ok(());
    };
    let name = group.metadata.name.clone().unwrap_or_default();
    let result = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &plugin.api())
        .create(&create_params(), &group)
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

/// The fields of the Service this operator sets, compared with what the cache holds.
fn service_matches(cached: &Service, desired: &Service) -> bool {
    let (Some(have), Some(want)) = (&cached.spec, &desired.spec) else {
        return false;
    };
    have.selector == want.selector
        && have.publish_not_ready_addresses == want.publish_not_ready_addresses
        && have.cluster_ip == want.cluster_ip
}

/// Freezes the runtime in `<job>-runtime-snapshot`, so later edits or deletion of the runtime
/// never change this job.
async fn freeze(job: &TrainJob, ctx: &Context, ns: &str, inputs: &Inputs) -> Result<(), Error> {
    let name = names::runtime_snapshot(&job.name_any());
    // Never an empty snapshot: that would freeze nothing.
    let runtime = serde_json::to_string(&inputs.runtime.spec)?;
    let cm = ConfigMap {
        metadata: names::child_meta(job, &name),
        data: Some(
            [
                ("runtime".to_string(), runtime),
                ("name".to_string(), inputs.runtime.label.clone()),
            ]
            .into(),
        ),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
        .create(&create_params(), &cm)
        .await
        .map_err(write_err("ConfigMap", &name, "freezing the runtime".into()))?;
    Ok(())
}

/// Generates the job's key pair (RSA off the async executor) and stores it in an immutable
/// Secret. A Secret created meanwhile by another reconcile is left as it is.
async fn create_secret(job: &TrainJob, ctx: &Context, ns: &str) -> Result<(), Error> {
    let algorithm = ctx.settings.ssh_algorithm;
    let comment = format!("trainjob/{ns}/{}", job.name_any());
    let keys = if algorithm.is_slow() {
        tokio::task::spawn_blocking(move || KeyPair::generate(algorithm, &comment)).await??
    } else {
        KeyPair::generate(algorithm, &comment)?
    };
    let secret = keys.secret(job)?;
    let name = secret.metadata.name.clone().unwrap_or_default();
    match Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .create(&create_params(), &secret)
        .await
    {
        Ok(_) => {
            tracing::info!(job = %job.name_any(), namespace = %ns, %algorithm, "created SSH Secret");
            ctx.memory.secret_exists(job);
            Ok(())
        }
        // Someone else's: the next reconcile reads it and checks its owner.
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(write_err("Secret", &name, "creating the SSH Secret".into())(e)),
    }
}

/// Writes `status` with server-side apply on the status subresource.
/// Whether `status` finishes a job that has not finished yet.
pub fn finishing(job: &TrainJob, status: &TrainJobStatus) -> bool {
    !lifecycle::finished(job.status.as_ref()) && lifecycle::finished(Some(status))
}

/// How long after a job finished a reconcile still makes sure its key is gone: a finishing
/// reconcile whose delete failed left it to the next one.
const KEY_RETIREMENT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes a finished job's SSH Secret once per run of the operator, after the status that
/// finishes the job is written. In that order, a delete that fails leaves a finished job with a
/// key for a while, never a running job without one (the retry might decide otherwise, and
/// would make a new key). Jobs that finished long ago are left alone, so a restarted operator
/// does not read thousands of Secrets that are gone.
pub async fn retire_key(job: &TrainJob, ctx: &Context, status: &TrainJobStatus) -> Result<(), Error> {
    if ctx.settings.keep_ssh_secrets || ctx.memory.key_retired(job) {
        return Ok(());
    }
    let recent = status.conditions.iter().filter(|c| c.status == "True").any(|c| {
        let age = k8s_openapi::jiff::Timestamp::now().duration_since(c.last_transition_time.0);
        age.as_secs() < KEY_RETIREMENT.as_secs() as i64
    });
    if recent || finishing(job, status) {
        delete_secret(job, ctx).await?;
    }
    ctx.memory.retire_key(job);
    Ok(())
}

/// Deletes the job's SSH Secret: a key lives no longer than its job, and the launcher kept for
/// `kubectl logs` has finished with it. Only a Secret this job owns, and only that very object
/// (a uid precondition), so a Secret someone else put under the name is never touched.
pub async fn delete_secret(job: &TrainJob, ctx: &Context) -> Result<(), Error> {
    let name = names::ssh_secret(&job.name_any());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let secret = api.get_opt(&name).await.map_err(|source| Error::Kube {
        action: format!("reading Secret {name}"),
        source,
    })?;
    let Some(secret) = secret else {
        return Ok(());
    };
    let uid = job.metadata.uid.as_deref();
    let owned = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid);
    if !owned {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.metadata.uid.clone(),
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

pub async fn write_status(job: &TrainJob, ctx: &Context, status: &TrainJobStatus) -> Result<(), Error> {
    let api: Api<TrainJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let patch =
        json!({"apiVersion": TrainJob::api_version(&()), "kind": TrainJob::kind(&()), "status": status});
    api.patch_status(&job.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Kube {
            action: "writing status".into(),
            source,
        })?;
    if finishing(job, status) {
        ctx.memory.finished(job);
    }
    Ok(())
}

/// Deletes every pod of the job that still runs (a job that failed for good).
pub async fn stop_pods(job: &TrainJob, ctx: &Context, pods: &[std::sync::Arc<Pod>]) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let running = |p: &&std::sync::Arc<Pod>| {
        p.metadata.deletion_timestamp.is_none()
            && matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                None | Some("Pending" | "Running")
            )
    };
    for pod in pods.iter().filter(running) {
        delete_pod(&api, pod, ctx).await?;
    }
    Ok(())
}

/// Deletes a pod (within the bound on pod writes, given the context); one that is already gone
/// is fine.
async fn delete_pod(api: &Api<Pod>, pod: &Pod, ctx: &Context) -> Result<(), Error> {
    let _permit = ctx.writes.acquire().await;
    let name = pod.name_any();
    // Only the pod that was seen: pods of the next restart attempt get the same names, and a
    // cache behind the API server (a new leader's, say) must not take one for its predecessor.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        // Gone, or already replaced by a pod this delete was not meant for.
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("deleting pod {name}"),
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
