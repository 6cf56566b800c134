//! The whole-job quota check: before the first pod exists, the requests of every pod of the job
//! (workers, launcher, other steps) are compared with the namespace's ResourceQuotas. A job that
//! cannot fit whole would otherwise get some pods admitted and the rest refused, and wait forever
//! half-created. Pure.

use std::collections::BTreeMap;
use std::fmt::Write;

use k8s_openapi::api::core::v1::{Container, Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What a set of pods asks for, per quota resource name (`pods`, `requests.cpu`, `limits.memory`,
/// `requests.nvidia.com/gpu`, ...), in base units (cores, bytes, counts).
pub type Demand = BTreeMap<String, f64>;

/// The demand of `pods`, as ResourceQuota admission counts it: per pod, the larger of the sum
/// of its containers and its largest init container, for each resource.
pub fn demand(pods: &[Pod]) -> Demand {
    let mut total = Demand::new();
    for pod in pods {
        *total.entry("pods".into()).or_default() += 1.0;
        *total.entry("count/pods".into()).or_default() += 1.0;
        let Some(spec) = &pod.spec else { continue };
        for kind in ["requests", "limits"] {
            let mut sum = BTreeMap::<String, f64>::new();
            for c in &spec.containers {
                for (name, q) in resources(c, kind) {
                    *sum.entry(name.clone()).or_default() += parse(q).unwrap_or(0.0);
                }
            }
            for c in spec.init_containers.iter().flatten() {
                for (name, q) in resources(c, kind) {
                    let v = parse(q).unwrap_or(0.0);
                    let entry = sum.entry(name.clone()).or_default();
                    *entry = entry.max(v);
                }
            }
            for (name, v) in sum {
                *total.entry(format!("{kind}.{name}")).or_default() += v;
                // `cpu` and `memory` alone mean requests, as in quota.
                if kind == "requests" && matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                    *total.entry(name).or_default() += v;
                }
            }
        }
    }
    total
}

/// The requests of `pods` together, per resource name, as the scheduler counts a pod's: the
/// larger of its containers' sum and its largest init container.
pub fn requests(pods: &[Pod]) -> BTreeMap<String, f64> {
    demand(pods)
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("requests.")?.to_string(), v)))
        .collect()
}

/// A quantity for `v` base units: whole numbers as they are, fractions in thousandths (`500m`).
pub fn format(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{}m", (v * 1000.0).round() as i64)
    }
}

/// A container's `requests` or `limits`.
fn resources<'a>(c: &'a Container, kind: &str) -> impl Iterator<Item = (&'a String, &'a Quantity)> {
    let r = c.resources.as_ref();
    let map = if kind == "requests" {
        r.and_then(|r| r.requests.as_ref())
    } else {
        r.and_then(|r| r.limits.as_ref())
    };
    map.into_iter().flatten()
}

/// Every quota the job does not fit in, with requested, used and allowed per resource; `None`
/// when it fits. Quotas with scopes apply only to some pods and are left to the API server.
pub fn check(quotas: &[ResourceQuota], demand: &Demand) -> Option<String> {
    let mut out = String::new();
    for quota in quotas {
        let Some(spec) = &quota.spec else { continue };
        if spec.scopes.as_ref().is_some_and(|s| !s.is_empty()) || spec.scope_selector.is_some() {
            continue;
        }
        let used = quota.status.as_ref().and_then(|s| s.used.as_ref());
        let mut short = Vec::new();
        for (name, hard) in spec.hard.iter().flatten() {
            let Some(requested) = demand.get(name).copied().filter(|v| *v > 0.0) else {
                continue;
            };
            let (Some(allowed), used) = (
                parse(hard),
                used.and_then(|u| u.get(name)).and_then(parse).unwrap_or(0.0),
            ) else {
                continue;
            };
            if requested + used > allowed {
                short.push(format!(
                    "{name}: requested {}, used {}, allowed {}",
                    show(requested),
                    show(used),
                    show(allowed)
                ));
            }
        }
        if !short.is_empty() {
            let name = quota.metadata.name.as_deref().unwrap_or_default();
            let _ = write!(
                out,
                "{}ResourceQuota {name} cannot hold the whole job ({})",
                if out.is_empty() { "" } else { "; " },
                short.join(", ")
            );
        }
    }
    (!out.is_empty()).then(|| {
        format!("{out}; no pod was created: lower spec.trainer.numNodes or resourcesPerNode, or ask for more quota")
    })
}

fn show(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A Kubernetes quantity in base units: `500m` is 0.5, `2Gi` is 2147483648, `1e3` is 1000.
pub fn parse(q: &Quantity) -> Option<f64> {
    let s = q.0.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    #[test]
    fn quantities_parse_in_base_units() {
        assert_eq!(parse(&q("500m")), Some(0.5));
        assert_eq!(parse(&q("2Gi")), Some(2147483648.0));
        assert_eq!(parse(&q("1e3")), Some(1000.0));
        assert_eq!(parse(&q("4")), Some(4.0));
        assert_eq!(parse(&q("1.5k")), Some(1500.0));
        // metrics-server reports CPU in nanocores and memory in Ki.
        assert_eq!(parse(&q("1500000n")), Some(0.0015));
        assert_eq!(parse(&q("12Ki")), Some(12288.0));
        assert_eq!(parse(&q("lots")), None);
        assert_eq!(parse(&q("")), None);
    }

    fn pod(requests: serde_json::Value, init: Option<serde_json::Value>) -> Pod {
        let mut spec = json!({"containers": [{"name": "node", "resources": {"requests": requests}}]});
        if let Some(init) = init {
            spec["initContainers"] = json!([{"name": "setup", "resources": {"requests": init}}]);
        }
        serde_json::from_value(json!({"spec": spec})).expect("pod")
    }

    fn quota(hard: serde_json::Value, used: serde_json::Value) -> ResourceQuota {
        serde_json::from_value(
            json!({"metadata": {"name": "team"}, "spec": {"hard": hard}, "status": {"used": used}}),
        )
        .expect("quota")
    }

    #[test]
    fn demand_counts_pods_requests_and_the_larger_init_container() {
        let pods = [
            pod(
                json!({"cpu": "4", "nvidia.com/gpu": "8"}),
                Some(json!({"cpu": "6"})),
            ),
            pod(json!({"cpu": "500m"}), None),
        ];
        let d = demand(&pods);
        assert_eq!(d["pods"], 2.0);
        assert_eq!(d["requests.cpu"], 6.5);
        assert_eq!(d["cpu"], 6.5);
        assert_eq!(d["requests.nvidia.com/gpu"], 8.0);
    }

    #[test]
    fn a_job_that_does_not_fit_is_refused_with_numbers() {
        let pods: Vec<Pod> = (0..3).map(|_| pod(json!({"cpu": "4"}), None)).collect();
        let d = demand(&pods);
        let fits = quota(
            json!({"requests.cpu": "16", "pods": "10"}),
            json!({"requests.cpu": "2"}),
        );
        assert_eq!(check(&[fits], &d), None);
        let tight = quota(
            json!({"requests.cpu": "10", "pods": "10"}),
            json!({"requests.cpu": "1", "pods": "1"}),
        );
        let message = check(&[tight], &d).expect("refused");
        assert_eq!(
            message,
            "ResourceQuota team cannot hold the whole job (requests.cpu: requested 12, used 1, allowed 10); no pod was created: lower spec.trainer.numNodes or resourcesPerNode, or ask for more quota"
        );
    }

    #[test]
    fn scoped_quotas_are_left_to_the_api_server() {
        let d = demand(&[pod(json!({"cpu": "4"}), None)]);
        let mut scoped = quota(json!({"requests.cpu": "1"}), json!({}));
        scoped.spec.as_mut().expect("spec").scopes = Some(vec!["BestEffort".into()]);
        assert_eq!(check(&[scoped], &d), None);
    }
}
