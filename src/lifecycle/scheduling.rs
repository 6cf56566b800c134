//! The gang watchdog: while a native gang is not wholly scheduled, say how far it got and why, in
//! the scheduler's own words (the pods' `PodScheduled` condition).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::plan::{JobPlan, Plan};

use super::pod_state::PodState;

/// Where the current attempt's gang stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Gang {
    /// Every member is bound to a node: which, in words.
    Scheduled(String),
    /// Not yet: how far it got and the scheduler's reason.
    Waiting(String),
}

fn bound(o: &PodState) -> bool {
    o.pod.spec.as_ref().is_some_and(|s| s.node_name.is_some())
}

/// The scheduler's message for a member that fits on its own but waits for the others: the
/// reason worth quoting is the one of a member that does not fit.
/// It is also the PodGroup's own message for a gang that does not fit.
const WAITING_FOR_GANG: &str = "pod group is unschedulable";

/// The gang's state, for a job with a native gang once its members exist. Members are the
/// workers, and the launcher when it runs ranks; the message counts each role, quotes the
/// scheduler's reason from the pods and, when kube-scheduler has rejected the gang as a whole,
/// its `PodGroupScheduled` condition (`pod_group`).
pub(super) fn gang(plan: &Plan, mine: &[&PodState], pod_group: Option<&Condition>) -> Option<Gang> {
    plan.native_gang()?;
    let roles: Vec<&JobPlan> = plan.jobs.iter().filter(|j| plan.gang_member(j.role)).collect();
    let members: Vec<&PodState> = mine
        .iter()
        .copied()
        .filter(|o| !o.deleting && roles.iter().any(|j| j.name == o.rjob))
        .collect();
    if members.is_empty() {
        return None;
    }
    let total: i64 = roles.iter().map(|j| j.pods()).sum();
    let scheduled = members.iter().filter(|o| bound(o)).count() as i64;
    let pods = |n: i64, role: &str| format!("{n} {role} pod{}", if n == 1 { "" } else { "s" });
    let wanted: Vec<String> = roles.iter().map(|j| pods(j.pods(), &j.name)).collect();
    if scheduled >= total {
        return Some(Gang::Scheduled(match roles.as_slice() {
            [_] => format!("all {total} worker pods are scheduled"),
            _ => format!("all {} are scheduled", wanted.join(" and ")),
        }));
    }
    let reasons: Vec<&str> = members
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
    let per_role = match roles.as_slice() {
        [_] => String::new(),
        _ => {
            let counts: Vec<String> = roles
                .iter()
                .map(|j| {
                    let n = members.iter().filter(|o| o.rjob == j.name && bound(o)).count();
                    format!("{} {n}", j.name)
                })
                .collect();
            format!(" ({})", counts.join(", "))
        }
    };
    let created = members.len() as i64;
    let made = if created < total {
        format!(", {created} created")
    } else {
        String::new()
    };
    let group = pod_group
        .filter(|c| c.status == "False")
        .map(|c| match c.message.as_str() {
            "" | WAITING_FOR_GANG => format!(" (PodGroup: {})", c.reason),
            message => format!(" (PodGroup: {}: {message})", c.reason),
        })
        .unwrap_or_default();
    Some(Gang::Waiting(format!(
        "waiting for {} to be scheduled together, {scheduled} scheduled{per_role}{made}: {reason}{group}",
        wanted.join(" and ")
    )))
}
