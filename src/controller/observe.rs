//! Observe: the Events and metrics a reconcile produced, derived from the status before it and
//! the decision after it. Recorded after the status is written, so an Event never describes a
//! state the API server does not have yet. Also settles the job in the operator's memory once
//! it finished.

use super::events;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};

use super::Context;
use super::error::namespace_ending;
use crate::api::TrainJob;
use crate::api::TrainJobStatus;
use crate::lifecycle::{self, Decision, Note, Severity};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::{JobLabels, ReasonLabels};
use crate::names::{self, OwnerError};
use crate::observed::Observed;
use crate::plan::{Plan, Role};
use crate::reasons::{condition, event};

/// After a decision was applied. `plan`: `None` for a job stopped by a permanent error before
/// it could be planned; only its condition changes are then told.
pub async fn decision(
    job: &TrainJob,
    ctx: &Context,
    plan: Option<&Plan>,
    observed: &Observed,
    d: &Decision,
    now: &Time,
) {
    let mut notes = match plan {
        Some(plan) => lifecycle::events(&job.name_any(), plan, job.status.as_ref(), d),
        None => lifecycle::transitions(job.status.as_ref(), &d.status),
    };
    if observed.fresh {
        ctx.metrics.jobs_created.get_or_create(&job_labels(job)).inc();
        let frozen = format!(
            "using {}; later edits to it do not affect this job",
            observed.runtime.label
        );
        // Said with the first pods when they come in the same pass: one Event, not two.
        match notes.iter_mut().find(|n| n.reason == event::PODS_CREATED) {
            Some(created) => created.message = format!("{frozen}; {}", created.message),
            None => notes.insert(
                0,
                Note {
                    severity: Severity::Normal,
                    reason: event::RUNTIME_FROZEN.into(),
                    message: frozen,
                },
            ),
        }
    }
    // Pods an earlier job of the same name left behind go with it: nothing to report. Nor is
    // anything reported on a finished job, whose memory is gone.
    let foreign = observed
        .foreign
        .iter()
        .filter(|_| !lifecycle::finished(Some(&d.status)))
        .filter(|p| {
            matches!(
                names::check_owner(job, "Pod", &p.metadata),
                Err(OwnerError::Conflict { .. })
            )
        })
        .filter_map(|p| p.metadata.name.clone());
    let foreign = ctx.memory.unreported(job, foreign);
    if !foreign.is_empty() {
        notes.push(Note {
            severity: Severity::Warning,
            reason: event::FOREIGN_PODS.into(),
            message: format!(
                "{} carry this TrainJob's labels but it does not own them: they are not counted and never deleted; remove their labels or delete them",
                foreign.join(", ")
            ),
        });
    }
    for note in &notes {
        record(ctx, job, note).await;
    }
    if let Some(plan) = plan {
        milestones(job, ctx, plan, observed, d);
    }
    outcome(job, ctx, &d.status, now);
    ctx.memory.set_phase(job, d.phase);
    if lifecycle::finished(Some(&d.status)) {
        ctx.memory.settle(job);
    }
}

fn job_labels(job: &TrainJob) -> JobLabels {
    JobLabels {
        namespace: job.namespace().unwrap_or_default(),
        runtime: job.spec.runtime_ref.name.clone(),
    }
}

/// Time since the operator first saw the job (millisecond precision); for a job an earlier
/// run of the operator took on, since its creation (whole seconds).
fn since_creation(ctx: &Context, job: &TrainJob) -> f64 {
    // Now, after the writes: `now` of the reconcile is from before them.
    let now = lifecycle::now();
    ctx.memory
        .first_seen(job)
        .or_else(|| job.metadata.creation_timestamp.clone())
        .map(|c| now.0.duration_since(c.0).as_secs_f64().max(0.0))
        .unwrap_or(0.0)
}

/// Time to the first launcher and to the full set of workers, on the first attempt only.
fn milestones(job: &TrainJob, ctx: &Context, plan: &Plan, observed: &Observed, d: &Decision) {
    if d.status.restarts.unwrap_or(0) != 0 {
        return;
    }
    let created = |role: Role| {
        d.create
            .iter()
            .filter(|(i, _)| plan.jobs[*i].role == role)
            .count()
    };
    if created(Role::Launcher) > 0 {
        ctx.metrics
            .time_to_launcher_created
            .observe(since_creation(ctx, job));
    }
    if created(Role::Node) > 0 {
        let workers = plan.job(Role::Node).map(|j| j.pods()).unwrap_or(0);
        let existing = observed
            .pods
            .iter()
            .filter(|p| p.labels().get(crate::names::JOB_ROLE_LABEL).map(String::as_str) == Some("node"))
            .count();
        if (existing + created(Role::Node)) as i64 >= workers {
            ctx.metrics.time_to_pods_created.observe(since_creation(ctx, job));
        }
    }
}

/// Completion and failure counters, once per transition.
fn outcome(job: &TrainJob, ctx: &Context, new: &TrainJobStatus, now: &Time) {
    let became = |type_: &str| {
        lifecycle::is_true(&new.conditions, type_)
            && !job
                .status
                .as_ref()
                .is_some_and(|s| lifecycle::is_true(&s.conditions, type_))
    };
    if became(condition::COMPLETE) {
        ctx.metrics.jobs_completed.get_or_create(&job_labels(job)).inc();
        ctx.metrics.time_to_complete.observe(since_creation(ctx, job));
    }
    if became(condition::GANG_SCHEDULED) {
        // From when the gang was first seen waiting, else from the job's creation.
        let waiting_since = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == condition::GANG_SCHEDULED))
            .map(|c| {
                now.0
                    .duration_since(c.last_transition_time.0)
                    .as_secs_f64()
                    .max(0.0)
            });
        ctx.metrics
            .time_to_gang_scheduled
            .observe(waiting_since.unwrap_or_else(|| since_creation(ctx, job)));
    }
    let reason_of = |status: Option<&TrainJobStatus>, type_: &str| {
        status?
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
            .map(|c| c.reason.clone())
    };
    let JobLabels { namespace, runtime } = job_labels(job);
    let count = |family: &Family<ReasonLabels, Counter>, reason: String| {
        family
            .get_or_create(&ReasonLabels {
                namespace: namespace.clone(),
                runtime: runtime.clone(),
                reason,
            })
            .inc();
    };
    let (old, new) = (job.status.as_ref(), Some(new));
    if let Some(reason) =
        reason_of(new, condition::FAILED).filter(|_| reason_of(old, condition::FAILED).is_none())
    {
        count(&ctx.metrics.jobs_failed, reason);
    }
    // A stall counts once per reason it takes.
    if let Some(reason) =
        reason_of(new, condition::STALLED).filter(|r| reason_of(old, condition::STALLED).as_ref() != Some(r))
    {
        count(&ctx.metrics.jobs_stalled, reason);
    }
}

/// Records an Event on the job and logs the same line, so every phase change shows in the
/// operator's log too.
async fn record(ctx: &Context, job: &TrainJob, note: &Note) {
    let (ns, name, reason) = (
        job.namespace().unwrap_or_default(),
        job.name_any(),
        note.reason.as_str(),
    );
    match note.severity {
        Severity::Normal => tracing::info!(namespace = %ns, job = %name, reason, "{}", note.message),
        Severity::Warning => tracing::warn!(namespace = %ns, job = %name, reason, "{}", note.message),
    }
    // Event notes are capped at 1 KiB by the API server.
    let message: String = note.message.chars().take(1000).collect();
    let event = events::Note {
        warning: matches!(note.severity, Severity::Warning),
        reason,
        note: &message,
    };
    match ctx.recorder.publish(&event, &job.object_ref(&())).await {
        Ok(()) => {}
        Err(e) if namespace_ending(&e) => {
            tracing::debug!(error = %e, reason, "no Event: the namespace is being deleted");
        }
        Err(e) => tracing::warn!(error = %e, reason, "could not record an Event"),
    }
}
