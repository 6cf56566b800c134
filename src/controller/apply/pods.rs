//! Pod writes: creates in one batch per job (doubling ones after a refusal), each awaited in the
//! watch afterwards, and deletes of the very pods seen (a uid precondition) or one collection
//! delete; all within the bound on pod writes in flight across every reconcile
//! ([`Context::writes`]).

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};

use super::{Context, Error, create_params, is_status, write_err};
use crate::api::TrainJob;
use crate::desired::{Delete, PodDelete};
use crate::names;

/// The largest batch of one job's creates; [`Context::writes`] bounds all jobs together.
const MAX_CREATE_BATCH: usize = 64;

/// Creates pods: all of a job at once (up to [`MAX_CREATE_BATCH`] per batch), so a small job's
/// workers take one round trip. After a refused create, as the Job controller does after a
/// failure, in batches that double from one while every create succeeds (1, 2, 4, ...): a
/// create that will fail for all of them (an invalid template, a quota) then fails once per
/// retry, not hundreds of times. [`Context::writes`] bounds the creates in flight across all jobs.
pub(super) async fn create(
    job: &TrainJob,
    ctx: &Context,
    api: &Api<Pod>,
    wanted: &[Pod],
) -> Result<(), Error> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mut batch = first_batch(wanted.len(), ctx.memory.create_failed(job));
    let mut wanted = wanted.iter().peekable();
    while wanted.peek().is_some() {
        let creates: Vec<_> = wanted
            .by_ref()
            .take(batch)
            .map(|pod| create_pod(job, ctx, api, pod))
            .collect();
        let created = futures::future::join_all(creates)
            .await
            .into_iter()
            .collect::<Result<(), Error>>();
        ctx.memory.create_result(job, created.is_ok());
        created?;
        batch = (batch * 2).min(MAX_CREATE_BATCH);
    }
    Ok(())
}

/// The first batch of `wanted` creates: all of them (to the cap), or one after a refusal.
fn first_batch(wanted: usize, failed_before: bool) -> usize {
    match failed_before {
        true => 1,
        false => wanted.clamp(1, MAX_CREATE_BATCH),
    }
}

/// Creates one pod of `job`, and notes it as awaited in the watch.
async fn create_pod(job: &TrainJob, ctx: &Context, api: &Api<Pod>, pod: &Pod) -> Result<(), Error> {
    let _permit = ctx.writes.acquire().await;
    let name = pod.metadata.name.clone().unwrap_or_default();
    // Create, never apply: a pod that exists already (the watch has not shown it yet) must not
    // be updated, e.g. re-gated after Kueue removed its scheduling gates.
    match api.create(&create_params(), pod).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 409) => {
            // Ours, not shown by the watch yet; or someone else's (without the labels the
            // watch selects, it never would be), which the job must not wait for.
            let existing =
                api.get_opt(&name)
                    .await
                    .map_err(write_err("pod", &name, format!("reading pod {name}")))?;
            if let Some(existing) = existing {
                names::check_owner(job, "Pod", &existing.metadata)?;
            }
        }
        Err(e) => return Err(write_err("pod", &name, format!("creating pod {name}"))(e)),
    }
    ctx.memory.created(job, [name]);
    Ok(())
}

/// Deletes the pods `delete` names: one collection delete, or each as the very object seen.
pub(super) async fn delete(
    job: &TrainJob,
    ctx: &Context,
    api: &Api<Pod>,
    delete: &Delete,
) -> Result<(), Error> {
    match delete {
        Delete::Workers { labels, fields } => {
            let params = kube::api::ListParams::default().labels(labels).fields(fields);
            api.delete_collection(&DeleteParams::background(), &params)
                .await
                .map(|_| ())
                .map_err(|source| Error::Kube {
                    action: format!("deleting the workers of {}", job.name_any()),
                    source,
                })
        }
        Delete::Each(pods) => {
            let deletes = pods.iter().map(|pod| delete_pod(api, pod, ctx));
            futures::future::join_all(deletes).await.into_iter().collect()
        }
    }
}

/// Deletes a pod, only the object it names (within the bound on pod writes); one that is
/// already gone is fine.
async fn delete_pod(api: &Api<Pod>, pod: &PodDelete, ctx: &Context) -> Result<(), Error> {
    let _permit = ctx.writes.acquire().await;
    let name = &pod.name;
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.uid.clone(),
            resource_version: None,
        }),
        grace_period_seconds: pod.force.then_some(0),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
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

    #[test]
    fn a_job_s_pods_go_in_one_batch_until_a_create_is_refused() {
        assert_eq!(first_batch(9, false), 9, "a small job: one round trip");
        assert_eq!(first_batch(513, false), MAX_CREATE_BATCH, "a wide one: capped");
        assert_eq!(first_batch(9, true), 1, "after a refusal: slow start");
    }
}
