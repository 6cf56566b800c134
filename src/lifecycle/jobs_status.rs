//! `status.jobsStatus` with JobSet's meaning: counts of child Jobs (`replicas` per replicated
//! job), not of pods.

use crate::api::JobStatus;
use crate::plan::Plan;

use super::pod_state::PodState;

/// Counts for every replicated job of `plan`, from the pods of restart `attempt` that are not
/// being deleted (`deleting` lists the pods this decision deletes).
pub(super) fn jobs_status(
    plan: &Plan,
    pods: &[PodState],
    attempt: i32,
    suspended: bool,
    deleting: &[String],
) -> Vec<JobStatus> {
    plan.jobs
        .iter()
        .map(|rjob| {
            let mut s = JobStatus {
                name: rjob.name.clone(),
                ..Default::default()
            };
            for job_index in 0..rjob.replicas {
                let of_job: Vec<&PodState> = pods
                    .iter()
                    .filter(|o| o.rjob == rjob.name && o.at.job_index == job_index)
                    .filter(|o| (o.attempt == Some(attempt) || o.carried) && !o.deleting)
                    .filter(|o| !deleting.iter().any(|d| d == o.name))
                    .collect();
                let count = |f: &dyn Fn(&PodState) -> bool| of_job.iter().filter(|o| f(o)).count() as i32;
                let complete = |n: i32| rjob.parallelism > 0 && n >= rjob.parallelism;
                s.active += i32::from(of_job.iter().any(|o| o.active()));
                s.failed += i32::from(of_job.iter().any(|o| o.failed()));
                s.succeeded += i32::from(complete(count(&|o| o.succeeded())));
                // Ready means running and ready now: a Job whose pods finished is not ready.
                s.ready += i32::from(complete(count(&|o| o.running_ready())));
            }
            if suspended {
                s.suspended = rjob.replicas;
            }
            s
        })
        .collect()
}

/// Whether the counts going from `old` to `new` cross a line that someone waits on: every child
/// Job ready or done, or no longer so (Kueue's `PodsReady` sums `ready` and `succeeded` over the
/// replicas), or no child Job active any more (Kueue waits for it after suspending a job).
pub(super) fn milestone(plan: &Plan, old: &[JobStatus], new: &[JobStatus]) -> bool {
    let replicas: i32 = plan.jobs.iter().map(|rjob| rjob.replicas).sum();
    let ready = |s: &[JobStatus]| s.iter().map(|j| j.ready + j.succeeded).sum::<i32>() >= replicas;
    let idle = |s: &[JobStatus]| s.iter().all(|j| j.active == 0);
    ready(old) != ready(new) || (!idle(old) && idle(new))
}
