//! The Events a decision deserves, derived from the status before and after it and from the
//! pods it creates, so the shell records them without deciding anything itself.

use crate::api::TrainJobStatus;
use crate::names;
use crate::plan::{Plan, Role};
use crate::reasons::{self, condition, event};

use super::Decision;
use super::conditions::is_true;

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
    /// CamelCase reason, from [`crate::reasons`].
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

fn note(severity: Severity, reason: &str, message: impl Into<String>) -> Note {
    Note {
        severity,
        reason: reason.into(),
        message: message.into(),
    }
}

/// Events for the condition changes from `old` to `new`: suspended, resumed, completed, failed.
pub fn transitions(old: Option<&TrainJobStatus>, new: &TrainJobStatus) -> Vec<Note> {
    let was = |type_: &str| old.is_some_and(|s| is_true(&s.conditions, type_));
    let became = |type_: &str| is_true(&new.conditions, type_) && !was(type_);
    let message = |type_: &str| {
        new.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.reason.clone(), c.message.clone()))
            .unwrap_or_default()
    };
    let mut notes = Vec::new();
    if became(condition::SUSPENDED) {
        notes.push(note(
            Severity::Normal,
            reasons::SUSPENDED,
            "TrainJob is suspended; its pods are deleted",
        ));
    }
    if was(condition::SUSPENDED) && !is_true(&new.conditions, condition::SUSPENDED) {
        notes.push(note(Severity::Normal, reasons::RESUMED, "TrainJob is resumed"));
    }
    if became(condition::COMPLETE) {
        notes.push(note(
            Severity::Normal,
            event::COMPLETED,
            message(condition::COMPLETE).1,
        ));
    }
    if became(condition::GANG_SCHEDULED) {
        let (reason, text) = message(condition::GANG_SCHEDULED);
        notes.push(note(Severity::Normal, &reason, text));
    }
    let waiting = |s: &TrainJobStatus| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::GANG_SCHEDULED && c.status == "False")
    };
    if waiting(new) && !old.is_some_and(waiting) {
        let (reason, text) = message(condition::GANG_SCHEDULED);
        notes.push(note(Severity::Normal, &reason, text));
    }
    // One Event per stall: when it starts or its reason changes, and when it is over.
    let stalled = |s: &TrainJobStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::STALLED && c.status == "True")
            .map(|c| c.reason.clone())
    };
    let was_stalled = old.and_then(stalled);
    match stalled(new) {
        Some(reason)
            if was_stalled.as_ref() != Some(&reason) && !is_true(&new.conditions, condition::FAILED) =>
        {
            notes.push(note(Severity::Warning, &reason, message(condition::STALLED).1));
        }
        None if was_stalled.is_some() && !is_true(&new.conditions, condition::FAILED) => {
            notes.push(note(
                Severity::Normal,
                reasons::RECOVERED,
                message(condition::STALLED).1,
            ));
        }
        _ => {}
    }
    if became(condition::FAILED) {
        let (reason, text) = message(condition::FAILED);
        notes.push(note(Severity::Warning, &reason, text));
    }
    notes
}

/// Every Event of `decision` for job `job`: condition changes, a gang restart, pods created.
pub fn events(job: &str, plan: &Plan, old: Option<&TrainJobStatus>, decision: &Decision) -> Vec<Note> {
    let mut notes = transitions(old, &decision.status);
    if let Some(why) = &decision.restart {
        notes.push(note(Severity::Warning, event::RESTARTING, why.clone()));
    }
    if decision.create.is_empty() {
        return notes;
    }
    let role = |i: usize| plan.jobs[i].role;
    let names: Vec<String> = decision
        .create
        .iter()
        .map(|(i, at)| names::pod(job, &plan.jobs[*i].name, at.job_index, at.index))
        .collect();
    let launcher = decision.create.iter().any(|(i, _)| role(*i) == Role::Launcher);
    let with_workers = decision.create.iter().any(|(i, _)| role(*i) == Role::Node);
    let has_workers = plan.job(Role::Node).is_some_and(|j| j.pods() > 0);
    // An Event's note holds at most 1 kB: a wide job's pods are counted, not listed.
    let pods = match names.as_slice() {
        [first, .., last] if names.len() > 4 => format!("{} pods, {first} … {last}", names.len()),
        _ => names.join(", "),
    };
    let message = if launcher && has_workers && !with_workers {
        format!("every worker is ready; creating {pods}")
    } else {
        format!("creating {pods}")
    };
    let reason = if launcher {
        event::LAUNCHER_CREATED
    } else {
        event::PODS_CREATED
    };
    notes.push(note(Severity::Normal, reason, message));
    notes
}
