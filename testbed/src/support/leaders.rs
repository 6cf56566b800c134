//! Which replica led when, for the tests that run several: read from the API server's audit log,
//! never from the replicas' own gauges (a replica that wrongly believed it led would say so).
//!
//! Every operator under test sends its identity as its user agent ([`user_agent`]), so the
//! audit log tells whose each request is, and the bed's audit policy records every write of a
//! Lease in `trainjob-system` with its body. From that log, [`Leadership`] rebuilds the history
//! of the leader Lease (holder, transitions, acquire and renew times, and when the API server
//! took each write) and checks that it could never have had two leaders at once:
//! - a replica only ever writes itself as the holder, or releases a Lease it holds;
//! - a replica takes the Lease from another only after the other's lease ran out: its write
//!   arrives at least the lease duration after the other's last renewal arrived;
//! - `leaseTransitions` counts the changes of holder;
//! - every other write of every replica (pods, Secrets, status, Events, ...) arrived while that
//!   replica held the Lease: after its taking the Lease reached the API server, before the write
//!   that ended its tenure (a release, or another's takeover) was done;
//! - every write of the operator's user names its replica.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::{Identity, Operator};

/// The namespace and name of the leader Lease (`config/manager`).
pub const LEASE: (&str, &str) = ("trainjob-system", "trainjob-operator");

const AGENT: &str = "trainjob-operator-replica/";

/// The user agent of the operator with `identity`.
pub fn user_agent(identity: &str) -> String {
    format!("{AGENT}{identity}")
}

/// The replica a user agent names.
pub fn replica(agent: &str) -> Option<&str> {
    agent.strip_prefix(AGENT)
}

/// Whether `op` says it leads. For steering a test (which replica to kill), not for checking:
/// see [`Leadership`].
pub fn leads(op: &Operator) -> bool {
    op.metrics.leader.get() == 1
}

/// Waits until `op` says it leads.
pub async fn wait_leads(what: &str, op: &Operator, within: Duration) {
    super::eventually(what, within, || async {
        if leads(op) {
            Ok(())
        } else {
            Err("still standing by".to_string())
        }
    })
    .await
}

/// One write of the leader Lease that the API server took (2xx), as the audit log records it.
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    /// When the API server received the write.
    pub received: Timestamp,
    /// When it was done (the response complete).
    pub done: Timestamp,
    /// The replica that wrote it, or `user <name>` for anyone else.
    pub writer: String,
    /// `holderIdentity`; `None` when released.
    pub holder: Option<String>,
    /// `leaseDurationSeconds`.
    pub duration: Duration,
    /// `leaseTransitions`.
    pub transitions: i32,
    /// `acquireTime`, as the writer stamped it.
    pub acquired: Option<Timestamp>,
    /// `renewTime`, as the writer stamped it.
    pub renewed: Option<Timestamp>,
}

/// A write by a replica to anything but the Lease.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    /// When the API server received it.
    pub received: Timestamp,
    /// The replica's identity.
    pub replica: String,
    /// Verb, resource and object, for messages.
    pub what: String,
}

/// A span in which one replica held the Lease.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenure {
    pub holder: String,
    /// When its taking the Lease reached the API server.
    pub from: Timestamp,
    /// When the write that ended it (a release, or another's takeover) was done; `None`: still
    /// held at the end of the log.
    pub until: Option<Timestamp>,
}

/// The leader Lease's history and the replicas' writes, from an audit log.
#[derive(Clone, Debug, Default)]
pub struct Leadership {
    /// The Lease's versions, in the order the API server took them.
    pub versions: Vec<Version>,
    /// Every other write of the replicas, in the order they arrived.
    pub writes: Vec<Write>,
    /// Writes of the operator's user without a replica's user agent.
    pub unattributed: Vec<String>,
}

fn timestamp(v: &Value) -> Option<Timestamp> {
    v.as_str()?.parse().ok()
}

const WRITES: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// The verb of an audit line as the API server writes it (`"verb":"get"`), without parsing it.
fn verb(line: &str) -> Option<&str> {
    let rest = &line[line.find("\"verb\":\"")? + 8..];
    Some(&rest[..rest.find('"')?])
}

impl Leadership {
    /// Reads an audit log (JSON lines) of a bed whose operators are [`Operator`]s.
    pub fn read(audit: &str) -> Leadership {
        let mut history = Leadership::default();
        // Reads, most of the log, are skipped before they are parsed.
        let writes = audit
            .lines()
            .filter(|l| verb(l).is_none_or(|v| WRITES.contains(&v)));
        for event in writes.filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            if !matches!(event["stage"].as_str(), Some("ResponseComplete" | "Panic")) {
                continue;
            }
            let Some(verb) = event["verb"].as_str().filter(|v| WRITES.contains(v)) else {
                continue;
            };
            let Some(received) = timestamp(&event["requestReceivedTimestamp"]) else {
                continue;
            };
            let object = &event["objectRef"];
            let name = object["name"]
                .as_str()
                .or_else(|| event["requestObject"]["metadata"]["name"].as_str())
                .unwrap_or_default();
            let lease = object["resource"] == "leases"
                && object["apiGroup"] == "coordination.k8s.io"
                && object["namespace"] == LEASE.0
                && name == LEASE.1;
            let agent = event["userAgent"].as_str().unwrap_or_default();
            let user = event["user"]["username"].as_str().unwrap_or_default();
            let writer = replica(agent).map(str::to_string);
            let what = || {
                let resource = match object["subresource"].as_str() {
                    Some(sub) => format!("{}/{sub}", object["resource"].as_str().unwrap_or_default()),
                    None => object["resource"].as_str().unwrap_or_default().to_string(),
                };
                format!(
                    "{verb} {resource} {}/{name} ({})",
                    object["namespace"].as_str().unwrap_or_default(),
                    event["responseStatus"]["code"]
                )
            };
            if user == Identity::Operator.user() && writer.is_none() {
                history
                    .unattributed
                    .push(format!("{} at {received} by {agent:?}", what()));
            }
            if !lease {
                if let Some(replica) = writer {
                    history.writes.push(Write {
                        received,
                        replica,
                        what: what(),
                    });
                }
                continue;
            }
            let ok = event["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|c| (200..300).contains(&c));
            if !ok || !matches!(verb, "create" | "update") {
                // A refused write changed nothing; a patch or delete of the Lease is no replica's
                // doing, and leaves nothing to follow.
                if ok {
                    history
                        .unattributed
                        .push(format!("{} at {received} by {agent:?}", what()));
                }
                continue;
            }
            let spec = &event["requestObject"]["spec"];
            history.versions.push(Version {
                received,
                done: timestamp(&event["stageTimestamp"]).unwrap_or(received),
                writer: writer.unwrap_or_else(|| format!("user {user}")),
                holder: spec["holderIdentity"]
                    .as_str()
                    .filter(|h| !h.is_empty())
                    .map(str::to_string),
                duration: Duration::from_secs(spec["leaseDurationSeconds"].as_u64().unwrap_or(0)),
                transitions: spec["leaseTransitions"]
                    .as_i64()
                    .and_then(|t| i32::try_from(t).ok())
                    .unwrap_or(0),
                acquired: timestamp(&spec["acquireTime"]),
                renewed: timestamp(&spec["renewTime"]),
            });
        }
        // Each write the API server takes was read from the version before it (the update
        // carries its resourceVersion), so it arrived after that one was stored: the order of
        // arrival is the order of the versions.
        history.versions.sort_by_key(|v| v.received);
        history.writes.sort_by_key(|w| w.received);
        history
    }

    /// Who held the Lease when. A tenure starts when the write that took the Lease arrived;
    /// should the log lack that write (an API server killed between storing a write and logging
    /// it), at the `acquireTime` its holder stamped, if earlier.
    pub fn tenures(&self) -> Vec<Tenure> {
        let mut tenures: Vec<Tenure> = Vec::new();
        let mut previous: Option<&Version> = None;
        for v in &self.versions {
            let before = previous.and_then(|p| p.holder.as_ref());
            if v.holder.as_ref() != before {
                if let Some(open) = tenures.last_mut().filter(|t| t.until.is_none()) {
                    open.until = Some(v.done);
                }
                if let Some(holder) = &v.holder {
                    let took = v.acquired == v.renewed;
                    let from = match v.acquired {
                        Some(acquired) if !took => acquired.min(v.received),
                        _ => v.received,
                    };
                    tenures.push(Tenure {
                        holder: holder.clone(),
                        from,
                        until: None,
                    });
                }
            }
            previous = Some(v);
        }
        tenures
    }

    /// Everything in the history that two leaders at once would need, in words; empty when the
    /// history shows one leader at a time.
    pub fn violations(&self) -> Vec<String> {
        let mut wrong: Vec<String> = self
            .unattributed
            .iter()
            .map(|w| format!("a write nobody can tell which replica made: {w}"))
            .collect();
        let mut previous: Option<&Version> = None;
        for v in &self.versions {
            let before = previous.and_then(|p| p.holder.as_deref());
            let at = v.received;
            match (&v.holder, v.writer.starts_with("user ")) {
                (_, true) => wrong.push(format!(
                    "the Lease was written by {} at {at}, holder {:?}",
                    v.writer, v.holder
                )),
                (Some(holder), false) if *holder != v.writer => wrong.push(format!(
                    "replica {} wrote {holder} as the holder at {at}",
                    v.writer
                )),
                (None, false) if before != Some(v.writer.as_str()) => wrong.push(format!(
                    "replica {} released the Lease at {at}, held by {before:?}",
                    v.writer
                )),
                _ => {}
            }
            if let Some(p) = previous {
                let taken = v.holder.is_some() && v.holder != p.holder;
                if let (true, Some(from)) = (taken, &p.holder) {
                    let after = at.duration_since(p.received);
                    let lease = k8s_openapi::jiff::SignedDuration::try_from(p.duration).unwrap_or_default();
                    if after < lease {
                        wrong.push(format!(
                            "{} took the Lease from {from} at {at}, {after:#} after {from}'s last renewal arrived ({}), before its {:?} lease ran out",
                            v.holder.as_deref().unwrap_or_default(),
                            p.received,
                            p.duration
                        ));
                    }
                }
                let counted = if taken {
                    v.transitions > p.transitions
                } else {
                    v.transitions == p.transitions
                };
                if !counted {
                    wrong.push(format!(
                        "leaseTransitions went from {} to {} at {at}, holder {:?} → {:?}",
                        p.transitions, v.transitions, p.holder, v.holder
                    ));
                }
            }
            previous = Some(v);
        }
        let mut by_holder: BTreeMap<String, Vec<Tenure>> = BTreeMap::new();
        for t in self.tenures() {
            by_holder.entry(t.holder.clone()).or_default().push(t);
        }
        for w in &self.writes {
            let tenures = by_holder.get(&w.replica);
            let inside = tenures.is_some_and(|ts| {
                ts.iter()
                    .any(|t| t.from <= w.received && t.until.is_none_or(|until| w.received < until))
            });
            if !inside {
                let held: Vec<String> = tenures
                    .into_iter()
                    .flatten()
                    .map(|t| match t.until {
                        Some(until) => format!("{} to {until}", t.from),
                        None => format!("from {}", t.from),
                    })
                    .collect();
                wrong.push(if held.is_empty() {
                    format!(
                        "replica {}, which never held the Lease, wrote: {} at {}",
                        w.replica, w.what, w.received
                    )
                } else {
                    format!(
                        "replica {} wrote {} at {} while it did not hold the Lease (it held it {})",
                        w.replica,
                        w.what,
                        w.received,
                        held.join(", ")
                    )
                });
            }
        }
        wrong
    }

    /// One line on what the history shows: versions, tenures, writes checked, and the closest
    /// takeover after the previous holder's last renewal.
    pub fn summary(&self) -> String {
        let closest = self
            .versions
            .windows(2)
            .filter(|p| p[1].holder.is_some() && p[0].holder.is_some() && p[1].holder != p[0].holder)
            .map(|p| (p[1].received.duration_since(p[0].received), p[0].duration))
            .min_by_key(|(after, _)| *after);
        let releases = self.versions.iter().filter(|v| v.holder.is_none()).count();
        format!(
            "the Lease's history: {} versions, {} tenures, {releases} releases; {} writes of the replicas checked against them{}",
            self.versions.len(),
            self.tenures().len(),
            self.writes.len(),
            closest.map_or(String::new(), |(after, lease)| format!(
                "; the closest takeover came {after:#} after the last renewal (lease {lease:?})"
            ))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An audit line; `at` in seconds after a fixed moment, `done` 10 ms later.
    fn line(at: f64, agent: &str, user: &str, verb: &str, resource: &str, name: &str, body: Value) -> String {
        let t = |s: f64| {
            Timestamp::from_microsecond(1_800_000_000_000_000 + (s * 1e6) as i64)
                .expect("time")
                .to_string()
        };
        let (group, ns) = if resource == "leases" {
            ("coordination.k8s.io", LEASE.0)
        } else {
            ("", "ns")
        };
        json!({"stage": "ResponseComplete", "verb": verb, "userAgent": agent,
            "user": {"username": user}, "responseStatus": {"code": 200},
            "objectRef": {"resource": resource, "apiGroup": group, "namespace": ns, "name": name},
            "requestObject": body,
            "requestReceivedTimestamp": t(at), "stageTimestamp": t(at + 0.01)})
        .to_string()
    }

    const OP: &str = "system:serviceaccount:trainjob-system:trainjob-operator";

    /// A Lease write by replica `by`: holder `holder` (`None`: a release), acquired at `acquired`.
    fn lease(at: f64, by: &str, holder: Option<&str>, transitions: i32, acquired: f64) -> String {
        let t = |s: f64| {
            Timestamp::from_microsecond(1_800_000_000_000_000 + (s * 1e6) as i64)
                .expect("time")
                .to_string()
        };
        let spec = json!({"holderIdentity": holder, "leaseDurationSeconds": 3,
            "leaseTransitions": transitions, "acquireTime": t(acquired), "renewTime": t(at)});
        line(
            at,
            &user_agent(by),
            OP,
            "update",
            "leases",
            LEASE.1,
            json!({"spec": spec}),
        )
    }

    fn pod(at: f64, by: &str) -> String {
        line(
            at,
            &user_agent(by),
            OP,
            "create",
            "pods",
            "pi-node-0-0",
            json!({}),
        )
    }

    /// a leads from 1 s, renews, and is killed after 5 s; b takes over 3 s after a's last renewal;
    /// b stops gracefully at 12 s, and c takes the released Lease at once.
    fn healthy() -> Vec<String> {
        vec![
            lease(1.0, "a", Some("a"), 0, 1.0),
            pod(1.5, "a"),
            lease(3.0, "a", Some("a"), 0, 1.0),
            lease(5.0, "a", Some("a"), 0, 1.0),
            pod(5.2, "a"),
            lease(8.0, "b", Some("b"), 1, 8.0),
            pod(8.5, "b"),
            lease(10.0, "b", Some("b"), 1, 8.0),
            pod(11.0, "b"),
            lease(12.0, "b", None, 1, 12.0),
            lease(12.5, "c", Some("c"), 2, 12.5),
            pod(13.0, "c"),
        ]
    }

    fn check(lines: &[String]) -> Vec<String> {
        Leadership::read(&lines.join("\n")).violations()
    }

    #[test]
    fn one_leader_at_a_time_is_no_violation() {
        let history = Leadership::read(&healthy().join("\n"));
        assert_eq!(history.violations(), Vec::<String>::new());
        assert_eq!(history.versions.len(), 7);
        assert_eq!(history.writes.len(), 5);
        let holders: Vec<_> = history.tenures().iter().map(|t| t.holder.clone()).collect();
        assert_eq!(holders, ["a", "b", "c"]);
        assert!(history.summary().contains("3 tenures"), "{}", history.summary());
    }

    #[test]
    fn a_takeover_before_the_lease_ran_out_is_two_leaders() {
        let mut lines = healthy();
        // b takes over 2 s after a's last renewal, with a's lease 3 s.
        lines[5] = lease(7.0, "b", Some("b"), 1, 7.0);
        let wrong = check(&lines);
        assert_eq!(wrong.len(), 1, "{wrong:#?}");
        assert!(wrong[0].contains("b took the Lease from a"), "{wrong:#?}");
    }

    #[test]
    fn a_write_after_losing_the_lease_is_two_leaders() {
        let mut lines = healthy();
        // a, cut off, still writes after b took over.
        lines.push(pod(8.6, "a"));
        let wrong = check(&lines);
        assert_eq!(wrong.len(), 1, "{wrong:#?}");
        assert!(wrong[0].contains("replica a wrote create pods"), "{wrong:#?}");
    }

    #[test]
    fn writes_before_taking_or_after_releasing_the_lease_are_caught() {
        let mut lines = healthy();
        lines.push(pod(7.9, "b"));
        lines.push(pod(12.2, "b"));
        lines.push(pod(1.0, "never"));
        let wrong = check(&lines);
        assert_eq!(wrong.len(), 3, "{wrong:#?}");
        assert!(wrong[0].contains("replica never, which never held"), "{wrong:#?}");
        assert!(wrong[1].contains("replica b wrote"), "{wrong:#?}");
        assert!(wrong[2].contains("replica b wrote"), "{wrong:#?}");
    }

    #[test]
    fn an_uncounted_takeover_is_caught() {
        let mut lines = healthy();
        lines[5] = lease(8.0, "b", Some("b"), 0, 8.0);
        lines[7] = lease(10.0, "b", Some("b"), 0, 8.0);
        lines[9] = lease(12.0, "b", None, 0, 12.0);
        lines[10] = lease(12.5, "c", Some("c"), 1, 12.5);
        let wrong = check(&lines);
        assert_eq!(wrong.len(), 1, "{wrong:#?}");
        assert!(
            wrong[0].contains("leaseTransitions went from 0 to 0"),
            "{wrong:#?}"
        );
    }

    #[test]
    fn a_replica_writing_another_as_the_holder_is_caught() {
        let mut lines = healthy();
        lines.push(lease(13.5, "c", Some("d"), 3, 13.5));
        let wrong = check(&lines);
        // And d took it 1 s after c's taking, before c's lease ran out.
        assert_eq!(wrong.len(), 2, "{wrong:#?}");
        assert!(wrong[0].contains("replica c wrote d as the holder"), "{wrong:#?}");
        assert!(wrong[1].contains("d took the Lease from c"), "{wrong:#?}");
    }

    #[test]
    fn lease_writes_by_others_and_writes_without_a_replica_are_caught() {
        let mut lines = healthy();
        let spec = json!({"spec": {"holderIdentity": "c", "leaseDurationSeconds": 3, "leaseTransitions": 2}});
        lines.push(line(15.0, "kubectl", "admin", "update", "leases", LEASE.1, spec));
        lines.push(line(16.0, "kube-rs", OP, "create", "pods", "x", json!({})));
        let wrong = check(&lines);
        assert_eq!(wrong.len(), 2, "{wrong:#?}");
        assert!(
            wrong[0].contains("nobody can tell which replica made: create pods ns/x"),
            "{wrong:#?}"
        );
        assert!(wrong[1].contains("written by user admin"), "{wrong:#?}");
    }

    #[test]
    fn a_takeover_missing_from_the_log_starts_at_its_acquire_time() {
        let mut lines = healthy();
        // b's taking the Lease was not logged; its first logged version is a renewal.
        lines.remove(5);
        let history = Leadership::read(&lines.join("\n"));
        assert_eq!(history.violations(), Vec::<String>::new());
        let b = &history.tenures()[1];
        assert_eq!(
            (b.holder.as_str(), b.from),
            ("b", history.versions[3].acquired.unwrap())
        );
    }
}
