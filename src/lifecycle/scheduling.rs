//! The gang watchdog: while a native gang is not wholly scheduled, say how far it got and why, in
//! the scheduler's own words (the pods' `PodScheduled` condition).

use crate::plan::{Plan, Role};

use super::observed::Observed;

/// Where the current attempt's gang stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Gang {
    /// Every worker is bound to a node.
    Scheduled(i64),
    /// Not yet: how far it got and the scheduler's reason.
    Waiting(String),
}

/// The scheduler's message for a member that fits on its own but waits for the others: the
/// reason worth quoting is the one of a member that does not fit.
const WAITING_FOR_GANG: &str = "pod group is unschedulable";

/// The gang's state, for a job with a native gang once its workers exist.
pub(super) fn gang(plan: &Plan, mine: &[&Observed]) -> Option<Gang> {
    crate::gang::min_count(plan)?;
    let node = plan.job(Role::Node)?;
    let workers: Vec<_> = mine
        .iter()
        .filter(|o| o.rjob == node.name && !o.deleting)
        .collect();
    if workers.is_empty() {
        return None;
    }
    let total = node.pods();
    let scheduled = workers
        .iter()
        .filter(|o| o.pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
        .count() as i64;
    if scheduled >= total {
        return Some(Gang::Scheduled(total));
    }
    let reasons: Vec<&str> = workers
        .iter()
        .filter_map(|o| {
            let conditions = o.pod.status.as_ref()?.conditions.as_ref()?;
            let c = conditions
                .iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
            c.message.as_deref().filter(|m| !m.is_empty())
        })
        .collect();
    let reason = reasons
        .iter()
        .find(|m| !m.starts_with(WAITING_FOR_GANG))
        .or(reasons.first())
        .copied()
        .unwrap_or("the scheduler has not tried them yet");
    let created = workers.len() as i64;
    let made = if created < total {
        format!(", {created} created")
    } else {
        String::new()
    };
    Some(Gang::Waiting(format!(
        "waiting for {total} {} pods to be scheduled together, {scheduled} scheduled{made}: {reason}",
        node.name
    )))
}
