//! The decision core: from a job, its plan and the pods observed, derive the status to write, the
//! pods to create and delete, and the Events to emit. Pure, so the whole lifecycle (ordering,
//! restarts, failure messages, suspension, deadlines) is unit-tested without a server.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{DependsOnStatus, JobStatus, NODE, TrainJob, TrainJobStatus};
use crate::names::{REPLICATED_JOB_LABEL, RESTART_ATTEMPT_LABEL};
use crate::pods::{PodIndex, indices};
use crate::resolve::{Plan, Role};

/// Condition types and reasons, as upstream.
pub mod conditions {
    /// The job is suspended (True) or was resumed (False).
    pub const SUSPENDED: &str = "Suspended";
    /// The job finished successfully.
    pub const COMPLETE: &str = "Complete";
    /// The job failed.
    pub const FAILED: &str = "Failed";
    /// Reason of `Suspended=True`.
    pub const REASON_SUSPENDED: &str = "Suspended";
    /// Reason of `Suspended=False`.
    pub const REASON_RESUMED: &str = "Resumed";
    /// Reason of `Complete=True`.
    pub const REASON_COMPLETED: &str = "AllJobsCompleted";
    /// A pod failed and no restarts were allowed.
    pub const REASON_FAILED_JOBS: &str = "FailedJobs";
    /// A pod failed after every allowed restart was used.
    pub const REASON_MAX_RESTARTS: &str = "ReachedMaxRestarts";
    /// `activeDeadlineSeconds` passed.
    pub const REASON_DEADLINE: &str = "DeadlineExceeded";
    /// The referenced runtime does not exist.
    pub const REASON_RUNTIME_NOT_FOUND: &str = "RuntimeNotFound";
}
use conditions::*;

/// Severity of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Progress.
    Normal,
    /// Something the user must look at.
    Warning,
}

/// An Event to record on the TrainJob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub severity: Severity,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

/// Coarse phase, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Suspended.
    Suspended,
    /// Pods are being created or are not all running yet.
    Starting,
    /// The launcher is running.
    Running,
    /// Restarting the gang.
    Restarting,
    /// Finished successfully.
    Complete,
    /// Failed.
    Failed,
}

impl Phase {
    /// Lower-case name used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Suspended => "suspended",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Restarting => "restarting",
            Phase::Complete => "complete",
            Phase::Failed => "failed",
        }
    }
}

/// What the reconciler should do.
#[derive(Clone, Debug, Default)]
pub struct Decision {
    /// Status to write (written only when it differs from the current one).
    pub status: TrainJobStatus,
    /// Pods to create: `(index into plan.jobs, pod index)`.
    pub create: Vec<(usize, PodIndex)>,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// Events to record.
    pub notes: Vec<Note>,
    /// When to look again even if nothing changes (the active deadline).
    pub requeue_after: Option<Duration>,
    /// Phase after this decision.
    pub phase: Option<Phase>,
}

/// A pod as the decision sees it.
struct Observed<'a> {
    pod: &'a Pod,
    name: &'a str,
    rjob: &'a str,
    attempt: Option<i32>,
    phase: &'a str,
    ready: bool,
    deleting: bool,
}

impl<'a> Observed<'a> {
    fn new(pod: &'a Pod) -> Option<Self> {
        let labels = pod.metadata.labels.as_ref()?;
        let status = pod.status.as_ref();
        Some(Observed {
            pod,
            name: pod.metadata.name.as_deref()?,
            rjob: labels.get(REPLICATED_JOB_LABEL)?,
            attempt: labels.get(RESTART_ATTEMPT_LABEL).and_then(|a| a.parse().ok()),
            phase: status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending"),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        })
    }

    fn active(&self) -> bool {
        !self.deleting && matches!(self.phase, "Pending" | "Running")
    }
}

/// Whether the job reached `Complete` or `Failed`.
pub fn finished(status: Option<&TrainJobStatus>) -> bool {
    status.is_some_and(|s| is_true(&s.conditions, COMPLETE) || is_true(&s.conditions, FAILED))
}

fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// Sets a condition, keeping `lastTransitionTime` when the status does not change, so an
/// unchanged state never rewrites the object.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &Time,
) {
    let status = if status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
                c.status = status.into();
            }
            c.reason = reason.into();
            c.message = message.into();
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now.clone(),
            observed_generation: None,
        }),
    }
}

/// A job that cannot run (runtime missing, invalid spec): `Failed` with `reason` and `message`.
pub fn failed_status(job: &TrainJob, reason: &str, message: &str, now: &Time) -> TrainJobStatus {
    let mut status = job.status.clone().unwrap_or_default();
    set_condition(&mut status.conditions, FAILED, true, reason, message, now);
    status
}

/// Decides what to do for `job` with `plan`, given the pods that currently exist.
pub fn decide(job: &TrainJob, plan: &Plan, pods: &[Pod], now: &Time) -> Decision {
    let observed: Vec<Observed> = pods.iter().filter_map(Observed::new).collect();
    let mut status = job.status.clone().unwrap_or_default();
    let attempt = status.restarts.unwrap_or(0);
    let current = |o: &&Observed| o.attempt == Some(attempt);
    let mut d = Decision::default();
    let job_name = job.metadata.name.as_deref().unwrap_or_default();

    // Pods of an earlier attempt go, whatever else happens.
    d.delete.extend(
        observed
            .iter()
            .filter(|o| o.attempt != Some(attempt) && !o.deleting)
            .map(|o| o.name.to_string()),
    );

    if finished(Some(&status)) {
        let complete = is_true(&status.conditions, COMPLETE);
        // Workers run sshd forever; the launcher (and any failed pod) stays for `kubectl logs`.
        d.delete.extend(
            observed
                .iter()
                .filter(|o| o.active() && (!complete || o.rjob != crate::api::LAUNCHER))
                .map(|o| o.name.to_string()),
        );
        d.phase = Some(if complete { Phase::Complete } else { Phase::Failed });
        return finish(d, status, plan, &observed, attempt, false);
    }

    let suspended = job.spec.suspend.unwrap_or(false);
    if suspended {
        if !is_true(&status.conditions, SUSPENDED) {
            d.notes.push(note(
                Severity::Normal,
                "Suspended",
                "TrainJob is suspended; its pods are deleted".into(),
            ));
        }
        set_condition(
            &mut status.conditions,
            SUSPENDED,
            true,
            REASON_SUSPENDED,
            "TrainJob is suspended",
            now,
        );
        d.delete.extend(
            observed
                .iter()
                .filter(|o| !o.deleting)
                .map(|o| o.name.to_string()),
        );
        d.phase = Some(Phase::Suspended);
        return finish(d, status, plan, &observed, attempt, true);
    }
    if is_true(&status.conditions, SUSPENDED) {
        set_condition(
            &mut status.conditions,
            SUSPENDED,
            false,
            REASON_RESUMED,
            "TrainJob is resumed",
            now,
        );
        d.notes
            .push(note(Severity::Normal, "Resumed", "TrainJob is resumed".into()));
    }

    if let Some(seconds) = job.spec.active_deadline_seconds {
        let started = status
            .conditions
            .iter()
            .find(|c| c.type_ == SUSPENDED && c.status == "False")
            .map(|c| c.last_transition_time.0)
            .or(job.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now.0);
        let elapsed = now.0.duration_since(started).as_secs();
        if elapsed >= seconds {
            let message = format!(
                "TrainJob exceeded its active deadline: it ran {elapsed}s of the allowed {seconds}s (spec.activeDeadlineSeconds)"
            );
            return fail(d, status, plan, &observed, attempt, REASON_DEADLINE, message, now);
        }
        d.requeue_after = Some(Duration::from_secs((seconds - elapsed).max(1) as u64));
    }

    let mine: Vec<&Observed> = observed.iter().filter(current).collect();
    // A pod of this attempt that failed, or that someone else is deleting (eviction, drain, node
    // loss), breaks the MPI world: the whole gang restarts or the job fails.
    let launcher = plan
        .job(Role::Launcher)
        .map(|j| j.name.as_str())
        .unwrap_or(crate::api::LAUNCHER);
    let broken = mine
        .iter()
        .find(|o| o.phase == "Failed")
        .or_else(|| mine.iter().find(|o| o.deleting && o.phase != "Succeeded"))
        .map(|o| describe_failure(o))
        .or_else(|| missing_worker(job_name, plan, &mine, launcher));
    if let Some(what) = broken {
        if attempt < plan.max_restarts {
            status.restarts = Some(attempt + 1);
            d.delete
                .extend(mine.iter().filter(|o| !o.deleting).map(|o| o.name.to_string()));
            d.notes.push(note(
                Severity::Warning,
                "Restarting",
                format!(
                    "{what}; restarting all pods (restart {} of {})",
                    attempt + 1,
                    plan.max_restarts
                ),
            ));
            d.phase = Some(Phase::Restarting);
            return finish(d, status, plan, &observed, attempt + 1, false);
        }
        let reason = if plan.max_restarts > 0 {
            REASON_MAX_RESTARTS
        } else {
            REASON_FAILED_JOBS
        };
        let message = if plan.max_restarts > 0 {
            format!(
                "{what}; all {} allowed restarts are used (failurePolicy.maxRestarts)",
                plan.max_restarts
            )
        } else {
            what
        };
        return fail(d, status, plan, &observed, attempt, reason, message, now);
    }

    if let Some(done) = mine.iter().find(|o| o.rjob == launcher && o.phase == "Succeeded") {
        let message = format!(
            "TrainJob completed successfully: launcher pod {} exited 0",
            done.name
        );
        set_condition(
            &mut status.conditions,
            COMPLETE,
            true,
            REASON_COMPLETED,
            &message,
            now,
        );
        d.notes.push(note(Severity::Normal, "Completed", message));
        d.delete.extend(
            mine.iter()
                .filter(|o| o.active() && o.rjob != launcher)
                .map(|o| o.name.to_string()),
        );
        d.phase = Some(Phase::Complete);
        d.requeue_after = None;
        return finish(d, status, plan, &observed, attempt, false);
    }

    // Create what is missing, in runtime order, once each job's dependencies are met. A name
    // still held by a pod of an earlier attempt waits until that pod is gone.
    let taken: Vec<&str> = observed.iter().map(|o| o.name).collect();
    let mut created_launcher = false;
    for (i, rjob) in plan.jobs.iter().enumerate() {
        if !rjob
            .depends_on
            .iter()
            .all(|dep| dependency_met(plan, &mine, &dep.name, dep.status))
        {
            continue;
        }
        for at in indices(rjob) {
            let name = crate::names::pod(job_name, &rjob.name, at.job_index, at.index);
            if !taken.contains(&name.as_str()) {
                d.create.push((i, at));
                created_launcher |= rjob.role == Role::Launcher;
            }
        }
    }
    if !d.create.is_empty() {
        let names: Vec<String> = d
            .create
            .iter()
            .map(|(i, at)| crate::names::pod(job_name, &plan.jobs[*i].name, at.job_index, at.index))
            .collect();
        let message = if created_launcher && mine.iter().any(|o| o.rjob != launcher) {
            format!("every worker is ready; creating {}", names.join(", "))
        } else {
            format!("creating {}", names.join(", "))
        };
        d.notes.push(note(
            Severity::Normal,
            if created_launcher {
                "LauncherCreated"
            } else {
                "PodsCreated"
            },
            message,
        ));
    }
    let launcher_running = mine.iter().any(|o| o.rjob == launcher && o.phase == "Running");
    d.phase = Some(if launcher_running {
        Phase::Running
    } else {
        Phase::Starting
    });
    finish(d, status, plan, &observed, attempt, false)
}

#[allow(clippy::too_many_arguments)]
fn fail(
    mut d: Decision,
    mut status: TrainJobStatus,
    plan: &Plan,
    observed: &[Observed],
    attempt: i32,
    reason: &'static str,
    message: String,
    now: &Time,
) -> Decision {
    set_condition(&mut status.conditions, FAILED, true, reason, &message, now);
    d.notes.push(note(Severity::Warning, reason, message));
    d.delete
        .extend(observed.iter().filter(|o| o.active()).map(|o| o.name.to_string()));
    d.create.clear();
    d.requeue_after = None;
    d.phase = Some(Phase::Failed);
    finish(d, status, plan, observed, attempt, false)
}

fn finish(
    mut d: Decision,
    mut status: TrainJobStatus,
    plan: &Plan,
    observed: &[Observed],
    attempt: i32,
    suspended: bool,
) -> Decision {
    status.jobs_status = jobs_status(plan, observed, attempt, suspended, &d.delete);
    d.delete.sort();
    d.delete.dedup();
    d.status = status;
    d
}

/// `jobsStatus` with JobSet's meaning: counts of child Jobs (`replicas` per replicated job), a Job
/// being ready when its ready and succeeded pods cover its parallelism.
fn jobs_status(
    plan: &Plan,
    observed: &[Observed],
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
                let prefix = format!("-{}-{job_index}-", rjob.name);
                let pods: Vec<&Observed> = observed
                    .iter()
                    .filter(|o| o.rjob == rjob.name && o.attempt == Some(attempt) && o.name.contains(&prefix))
                    .filter(|o| !o.deleting && !deleting.iter().any(|d| d == o.name))
                    .collect();
                let count = |f: &dyn Fn(&Observed) -> bool| pods.iter().filter(|o| f(o)).count() as i32;
                let succeeded = count(&|o| o.phase == "Succeeded");
                let ready = count(&|o| o.phase == "Running" && o.ready);
                s.active += i32::from(pods.iter().any(|o| o.active()));
                s.failed += i32::from(pods.iter().any(|o| o.phase == "Failed"));
                s.succeeded += i32::from(rjob.parallelism > 0 && succeeded >= rjob.parallelism);
                s.ready += i32::from(rjob.parallelism > 0 && ready + succeeded >= rjob.parallelism);
            }
            if suspended {
                s.suspended = rjob.replicas;
            }
            s
        })
        .collect()
}

fn dependency_met(plan: &Plan, mine: &[&Observed], dependency: &str, wanted: DependsOnStatus) -> bool {
    let Some(dep) = plan.jobs.iter().find(|j| j.name == dependency) else {
        return false;
    };
    let done = mine
        .iter()
        .filter(|o| o.rjob == dependency && !o.deleting)
        .filter(|o| match wanted {
            DependsOnStatus::Ready => o.phase == "Succeeded" || (o.phase == "Running" && o.ready),
            DependsOnStatus::Complete => o.phase == "Succeeded",
        })
        .count();
    done as i32 >= dep.pods()
}

/// Once the launcher runs, every worker must exist: one that vanished (deleted, or its node lost
/// and the pod garbage-collected) has taken its ranks with it.
fn missing_worker(job: &str, plan: &Plan, mine: &[&Observed], launcher: &str) -> Option<String> {
    if !mine.iter().any(|o| o.rjob == launcher) {
        return None;
    }
    let node = plan.job(Role::Node)?;
    let name = indices(node)
        .map(|at| crate::names::pod(job, &node.name, at.job_index, at.index))
        .find(|name| !mine.iter().any(|o| o.name == name))?;
    Some(format!(
        "pod {name} disappeared while the job ran (deleted, evicted or its node was lost); MPI cannot continue without it"
    ))
}

/// One line saying which pod failed, how, and what to do about it.
fn describe_failure(o: &Observed) -> String {
    let status = o.pod.status.as_ref();
    if o.deleting && o.phase != "Failed" {
        return format!(
            "pod {} was deleted while the job ran (evicted, drained or its node was lost); MPI cannot continue without it",
            o.name
        );
    }
    if status.and_then(|s| s.reason.as_deref()) == Some("Evicted") {
        let why = status.and_then(|s| s.message.clone()).unwrap_or_default();
        return format!("pod {} was evicted: {why}", o.name)
            .trim_end_matches([':', ' '])
            .to_string();
    }
    let terminated = status.and_then(|s| s.container_statuses.as_ref()).and_then(|cs| {
        let mut cs: Vec<_> = cs
            .iter()
            .filter_map(|c| Some((c.name.as_str(), c.state.as_ref()?.terminated.as_ref()?)))
            .collect();
        // The training container first, then any container that failed.
        cs.sort_by_key(|(name, t)| (*name != NODE, t.exit_code == 0));
        cs.into_iter().next()
    });
    match terminated {
        Some((container, t)) => {
            let reason = t.reason.as_deref().unwrap_or("Error");
            let hint = match reason {
                "OOMKilled" => {
                    "; it ran out of memory: raise the memory limit (spec.trainer.resourcesPerNode)"
                        .to_string()
                }
                _ => format!("; see `kubectl logs {} -c {container}`", o.name),
            };
            format!(
                "pod {} failed: container {container} exited with code {} ({reason}){hint}",
                o.name, t.exit_code
            )
        }
        None => {
            let why = status
                .and_then(|s| s.message.clone().or(s.reason.clone()))
                .unwrap_or_else(|| "no container status".into());
            format!("pod {} failed: {why}", o.name)
        }
    }
}

fn note(severity: Severity, reason: &'static str, message: String) -> Note {
    Note {
        severity,
        reason,
        message,
    }
}

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests;
