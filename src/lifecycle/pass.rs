//! One decision in the making: the states of a job, tried in order, each a small function on
//! [`Pass`], which holds the job's status as it is being changed and the decision so far.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::{finished, is_true, set_condition};
use super::pod_state::PodState;
use super::{Decision, Error, Phase, failure, jobs_status, scheduling, stall};
use crate::api::{DependsOnStatus, TrainJob, TrainJobStatus};
use crate::names;
use crate::observed::Observed;
use crate::plan::{Plan, PodIndex, Role};
use crate::reasons::{self, condition};

/// How often a waiting native gang is looked at again without a pod event.
const GANG_REFRESH: Duration = Duration::from_secs(15);

/// The states, tried in order.
pub(super) fn pass(job: &TrainJob, plan: &Plan, observed: &Observed, now: &Time) -> Result<Decision, Error> {
    let mut pass = Pass::new(job, plan, observed, now);
    pass.carry_finished_steps();
    // A pod of a later attempt than the status names means this copy of the job is older than
    // the pods (the job's watch lags the pods', as after a leader change): deciding from it would
    // delete the newer gang as an earlier one. Its newer status is on the way.
    if pass
        .pods
        .iter()
        .any(|o| o.attempt.is_some_and(|a| a > pass.attempt))
    {
        return Ok(pass.stale());
    }
    pass.delete_earlier_attempts();
    if finished(Some(&pass.status)) {
        return Ok(pass.finished());
    }
    if job.spec.suspend.unwrap_or(false) {
        return Ok(pass.suspended());
    }
    pass.resume();
    if let Some(message) = pass.deadline_passed() {
        return Ok(pass.fail(reasons::DEADLINE_EXCEEDED, message));
    }
    let log = observed
        .failed_log
        .as_ref()
        .map(|(pod, log)| (pod.as_str(), log.as_str()));
    let lost = &observed.lost_nodes;
    if let Some(what) = failure::broken(job, plan, &pass.mine(), log, lost) {
        return Ok(pass.restart_or_fail(what));
    }
    if let Some(launcher) = pass.launcher_succeeded() {
        return Ok(pass.complete(launcher));
    }
    pass.create_missing()
}

/// One decision in the making.
struct Pass<'a> {
    job: &'a TrainJob,
    plan: &'a Plan,
    observed: &'a Observed,
    now: &'a Time,
    pods: Vec<PodState<'a>>,
    status: TrainJobStatus,
    attempt: i32,
    d: Decision,
}

impl<'a> Pass<'a> {
    fn new(job: &'a TrainJob, plan: &'a Plan, observed: &'a Observed, now: &'a Time) -> Self {
        let status = job.status.clone().unwrap_or_default();
        Pass {
            job,
            plan,
            observed,
            now,
            pods: observed
                .pods
                .iter()
                .filter_map(|p| PodState::new(p))
                .map(|mut o| {
                    // `Unknown`: what an API server of old said of a pod whose node stopped answering.
                    o.lost =
                        o.phase == "Unknown" || o.node().is_some_and(|n| observed.lost_nodes.contains_key(n));
                    o
                })
                .collect(),
            attempt: status.restarts.unwrap_or(0),
            status,
            d: Decision::default(),
        }
    }

    fn job_name(&self) -> &'a str {
        self.job.metadata.name.as_deref().unwrap_or_default()
    }

    /// The current attempt's pods, without those deleted while the job was suspended: they are
    /// on their way out and say nothing about the resumed run (a quick resume finds them still
    /// terminating, often `Failed`, and must not take that for a broken world).
    fn mine(&self) -> Vec<&PodState<'a>> {
        let resumed = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::SUSPENDED && c.status == "False")
            .map(|c| c.last_transition_time.0);
        let suspension_leftover = |o: &PodState| {
            // The deletion timestamp is when the grace period ends; the request came that long
            // before it.
            let meta = &o.pod.metadata;
            let grace =
                k8s_openapi::jiff::SignedDuration::from_secs(meta.deletion_grace_period_seconds.unwrap_or(0));
            let requested = meta
                .deletion_timestamp
                .as_ref()
                .and_then(|t| t.0.checked_sub(grace).ok());
            o.deleting && matches!((requested, resumed), (Some(d), Some(r)) if d <= r)
        };
        self.pods
            .iter()
            .filter(|o| (o.attempt == Some(self.attempt) || o.carried) && !suspension_leftover(o))
            .collect()
    }

    fn delete_where(&mut self, keep: impl Fn(&PodState) -> bool) {
        let names = self.pods.iter().filter(|o| !keep(o)).map(|o| o.name.to_string());
        self.d.delete.extend(names);
    }

    /// Nothing to do until a newer copy of the job arrives; look again soon in case none does.
    fn stale(mut self) -> Decision {
        self.d.status = self.status;
        self.d.phase = Some(Phase::Restarting);
        self.d.requeue_after = Some(Duration::from_secs(1));
        self.d
    }

    /// Whether `o` is a step outside the MPI world (an initializer) that finished: a gang
    /// restart does not run it again.
    fn finished_step(&self, o: &PodState) -> bool {
        o.succeeded() && !o.deleting && self.plan.job_named(o.rjob).is_some_and(|j| j.role == Role::Other)
    }

    /// Marks the finished steps of earlier attempts as part of this one.
    fn carry_finished_steps(&mut self) {
        let carried: Vec<bool> = self
            .pods
            .iter()
            .map(|o| o.attempt.is_some_and(|a| a < self.attempt) && self.finished_step(o))
            .collect();
        for (o, carried) in self.pods.iter_mut().zip(carried) {
            o.carried = carried;
        }
    }

    /// Pods of an earlier attempt go, whatever else happens, but for the finished steps it
    /// carries.
    fn delete_earlier_attempts(&mut self) {
        let attempt = self.attempt;
        self.delete_where(|o| o.attempt == Some(attempt) || o.leaving() || o.carried);
    }

    /// Complete or Failed: stop what still runs. Workers run sshd forever; the launcher of a
    /// complete job (and any failed pod) stays for `kubectl logs`.
    fn finished(mut self) -> Decision {
        let complete = is_true(&self.status.conditions, condition::COMPLETE);
        let launcher = self.plan.launcher().to_string();
        self.delete_where(|o| (!o.active() && !o.lost) || (complete && o.rjob == launcher));
        self.d.phase = Some(if complete { Phase::Complete } else { Phase::Failed });
        self.finish(false)
    }

    /// Suspended (Kueue, or the user): no pods, the Secret stays.
    fn suspended(mut self) -> Decision {
        set_condition(
            &mut self.status.conditions,
            condition::SUSPENDED,
            true,
            reasons::SUSPENDED,
            "TrainJob is suspended",
            self.now,
        );
        self.delete_where(|o| o.leaving());
        self.d.phase = Some(Phase::Suspended);
        self.finish(true)
    }

    fn resume(&mut self) {
        if is_true(&self.status.conditions, condition::SUSPENDED) {
            let conditions = &mut self.status.conditions;
            set_condition(
                conditions,
                condition::SUSPENDED,
                false,
                reasons::RESUMED,
                "TrainJob is resumed",
                self.now,
            );
        }
    }

    /// The failure message once `activeDeadlineSeconds` passed (counted from the last resume,
    /// else from creation); until then, asks to be woken when it will.
    fn deadline_passed(&mut self) -> Option<String> {
        let seconds = self.job.spec.active_deadline_seconds?;
        let started = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::SUSPENDED && c.status == "False")
            .map(|c| c.last_transition_time.0)
            .or(self.job.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(self.now.0);
        let elapsed = self.now.0.duration_since(started).as_secs();
        if elapsed >= seconds {
            return Some(format!(
                "TrainJob exceeded its active deadline: it ran {elapsed}s of the allowed {seconds}s (spec.activeDeadlineSeconds)"
            ));
        }
        self.d.requeue_after = Some(Duration::from_secs((seconds - elapsed).max(1) as u64));
        None
    }

    /// A broken MPI world restarts as a whole while `maxRestarts` allows, else the job fails.
    fn restart_or_fail(mut self, what: String) -> Decision {
        let max = self.plan.max_restarts;
        if self.attempt < max {
            self.attempt += 1;
            self.status.restarts = Some(self.attempt);
            let finished: Vec<bool> = self.pods.iter().map(|o| self.finished_step(o)).collect();
            let keep: std::collections::BTreeSet<&str> = self
                .pods
                .iter()
                .zip(finished)
                .filter(|(o, finished)| *finished || o.leaving())
                .map(|(o, _)| o.name)
                .collect();
            self.delete_where(|o| keep.contains(o.name));
            self.d.restart = Some(format!(
                "{what}; restarting all pods (restart {} of {max})",
                self.attempt
            ));
            self.d.phase = Some(Phase::Restarting);
            return self.finish(false);
        }
        if max > 0 {
            let message = format!("{what}; all {max} allowed restarts are used (failurePolicy.maxRestarts)");
            self.fail(reasons::REACHED_MAX_RESTARTS, message)
        } else {
            self.fail(reasons::FAILED_JOBS, what)
        }
    }

    fn fail(mut self, reason: &str, message: String) -> Decision {
        set_condition(
            &mut self.status.conditions,
            condition::FAILED,
            true,
            reason,
            &message,
            self.now,
        );
        self.delete_where(|o| !o.active() && !o.lost);
        self.d.create.clear();
        self.d.requeue_after = None;
        self.d.phase = Some(Phase::Failed);
        self.finish(false)
    }

    /// The launcher pod of this attempt that exited 0, if any.
    fn launcher_succeeded(&self) -> Option<String> {
        let launcher = self.plan.launcher();
        self.mine()
            .iter()
            .find(|o| o.rjob == launcher && o.succeeded())
            .map(|o| o.name.to_string())
    }

    /// The launcher exited 0: Complete, and the workers (sshd forever) go.
    fn complete(mut self, launcher_pod: String) -> Decision {
        let message = format!("TrainJob completed successfully: launcher pod {launcher_pod} exited 0");
        set_condition(
            &mut self.status.conditions,
            condition::COMPLETE,
            true,
            reasons::ALL_JOBS_COMPLETED,
            &message,
            self.now,
        );
        let (attempt, launcher) = (self.attempt, self.plan.launcher().to_string());
        self.delete_where(|o| !(o.attempt == Some(attempt) && o.active() && o.rjob != launcher));
        self.d.phase = Some(Phase::Complete);
        self.d.requeue_after = None;
        self.finish(false)
    }

    /// Creates what is missing, in runtime order, once each replicated job's dependencies are
    /// met. An index still held by a pod of an earlier attempt waits until that pod is gone, as
    /// does one an earlier reconcile created that the watch has not shown yet (`awaited`). A
    /// launcher in the workers' gang comes with them (it waits for them itself): a gang forms
    /// only once all its members exist. A pod name held by a pod that is not the job's is an
    /// error: someone else's pod fails the job, an earlier job's leftover is waited for.
    fn create_missing(mut self) -> Result<Decision, Error> {
        if let Some(message) = self.watch_gang() {
            return Ok(self.fail(reasons::GANG_SCHEDULING_TIMEOUT, message));
        }
        let stall = stall::find(self.plan, &self.mine(), &self.observed.claims, self.now);
        let timeout = self.plan.cluster.stall_timeout;
        let verdict = stall::watch(&mut self.status.conditions, stall, timeout, self.now);
        if let Some((reason, message)) = verdict.fail {
            return Ok(self.fail(reason, message));
        }
        if let Some(recheck) = verdict.recheck {
            self.d.requeue_after = Some(self.d.requeue_after.map_or(recheck, |r| r.min(recheck)));
        }
        let mine = self.mine();
        let mut create = Vec::new();
        let launcher_in_gang = self.plan.launcher_in_gang();
        for (i, rjob) in self.plan.jobs.iter().enumerate() {
            let ready = (launcher_in_gang && rjob.role == Role::Launcher)
                || rjob
                    .depends_on
                    .iter()
                    .all(|dep| dependency_met(self.plan, &mine, &dep.name, dep.status));
            if !ready {
                continue;
            }
            let taken = |at: &PodIndex| {
                let name = names::pod(self.job_name(), &rjob.name, at.job_index, at.index);
                self.pods.iter().any(|o| o.rjob == rjob.name && o.at == *at)
                    || self.observed.awaited.contains(&name)
            };
            create.extend(rjob.indices().filter(|at| !taken(at)).map(|at| (i, at)));
        }
        for (i, at) in &create {
            let name = names::pod(self.job_name(), &self.plan.jobs[*i].name, at.job_index, at.index);
            let held = self
                .observed
                .foreign
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(&name));
            if let Some(pod) = held {
                names::check_owner(self.job, "Pod", &pod.metadata)?;
            }
        }
        let launcher = self.plan.launcher();
        let running = mine.iter().any(|o| o.rjob == launcher && o.phase == "Running");
        self.d.create = create;
        self.d.phase = Some(if running { Phase::Running } else { Phase::Starting });
        Ok(self.finish(false))
    }

    /// Keeps `GangScheduled` current for a native gang; the failure message once the runtime's
    /// `scheduleTimeoutSeconds` passed without the whole gang scheduled. Without a timeout the
    /// job waits for as long as it takes.
    fn watch_gang(&mut self) -> Option<String> {
        let state = scheduling::gang(self.plan, &self.mine(), self.observed.gang.as_ref())?;
        let conditions = &mut self.status.conditions;
        let message = match state {
            scheduling::Gang::Scheduled(message) => {
                set_condition(
                    conditions,
                    condition::GANG_SCHEDULED,
                    true,
                    reasons::GANG_SCHEDULED,
                    &message,
                    self.now,
                );
                return None;
            }
            scheduling::Gang::Waiting(message) => message,
        };
        set_condition(
            conditions,
            condition::GANG_SCHEDULED,
            false,
            reasons::WAITING_FOR_GANG,
            &message,
            self.now,
        );
        // The PodGroup is not watched (pods are): look again now and then, so that what the
        // scheduler writes on it reaches the message.
        self.d.requeue_after = Some(self.d.requeue_after.map_or(GANG_REFRESH, |r| r.min(GANG_REFRESH)));
        let timeout = self
            .plan
            .gang
            .as_ref()
            .and_then(|g| g.workload.as_ref())
            .and_then(|w| w.schedule_timeout_seconds)?;
        let since = conditions
            .iter()
            .find(|c| c.type_ == condition::GANG_SCHEDULED)
            .map_or(self.now.0, |c| c.last_transition_time.0);
        let waited = self.now.0.duration_since(since).as_secs();
        let timeout = i64::from(timeout);
        if waited >= timeout {
            let who = if self.plan.launcher_in_gang() {
                "the workers and the launcher were"
            } else {
                "the workers were"
            };
            return Some(format!(
                "{who} not scheduled within {timeout}s (podGroupPolicy.workload.scheduleTimeoutSeconds): {message}"
            ));
        }
        let left = Duration::from_secs((timeout - waited).max(1).unsigned_abs());
        self.d.requeue_after = Some(self.d.requeue_after.map_or(left, |r| r.min(left)));
        None
    }

    fn finish(mut self, suspended: bool) -> Decision {
        self.status.jobs_status =
            jobs_status::jobs_status(self.plan, &self.pods, self.attempt, suspended, &self.d.delete);
        let old = self.job.status.as_ref().map_or(&[][..], |s| &s.jobs_status[..]);
        self.d.milestone = jobs_status::milestone(self.plan, old, &self.status.jobs_status);
        self.d.delete.sort();
        self.d.delete.dedup();
        self.d.status = self.status;
        self.d
    }
}

fn dependency_met(plan: &Plan, mine: &[&PodState], dependency: &str, wanted: DependsOnStatus) -> bool {
    let Some(dep) = plan.job_named(dependency) else {
        return false;
    };
    let done = mine
        .iter()
        .filter(|o| o.rjob == dependency && !o.deleting)
        .filter(|o| match wanted {
            DependsOnStatus::Ready => o.succeeded() || o.running_ready(),
            DependsOnStatus::Complete => o.succeeded(),
        })
        .count();
    done as i64 >= dep.pods()
}
