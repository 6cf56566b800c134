//! Reading and writing `status.conditions` the Kubernetes way: `lastTransitionTime` moves only
//! when a condition's status changes, so an unchanged state never rewrites the object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::TrainJobStatus;
use crate::reasons::condition::{COMPLETE, FAILED};

/// Whether condition `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// Whether the job reached `Complete` or `Failed`.
pub fn finished(status: Option<&TrainJobStatus>) -> bool {
    status.is_some_and(|s| is_true(&s.conditions, COMPLETE) || is_true(&s.conditions, FAILED))
}

/// Sets a condition, keeping `lastTransitionTime` when its status does not change.
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

/// `status` with `Failed=True` for `reason` and `message`: a job that cannot run.
pub fn failed_status(
    status: Option<&TrainJobStatus>,
    reason: &str,
    message: &str,
    now: &Time,
) -> TrainJobStatus {
    let mut status = status.cloned().unwrap_or_default();
    set_condition(&mut status.conditions, FAILED, true, reason, message, now);
    status
}

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    const T0: &str = "2026-11-25T10:00:05Z";

    #[test]
    fn set_condition_keeps_transition_time_unless_status_changes() {
        let mut conditions = vec![];
        set_condition(&mut conditions, "Suspended", true, "Suspended", "a", &at(T0));
        set_condition(
            &mut conditions,
            "Suspended",
            true,
            "Suspended",
            "b",
            &at("2026-11-25T11:00:00Z"),
        );
        assert_eq!(conditions[0].last_transition_time, at(T0));
        assert_eq!(conditions[0].message, "b");
        set_condition(
            &mut conditions,
            "Suspended",
            false,
            "Resumed",
            "c",
            &at("2026-11-25T12:00:00Z"),
        );
        assert_eq!(conditions[0].last_transition_time, at("2026-11-25T12:00:00Z"));
    }
}
