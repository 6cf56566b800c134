//! The per-job NetworkPolicy (`--network-policies`): a job's pods accept traffic only from pods
//! of the same job, so another tenant's pod cannot reach a worker's sshd or an MPI rank. Egress
//! is left alone (DNS, storage, image pulls).
//!
//! Ports: the ones the runtime's containers declare, when any does; otherwise every port, since
//! MPI's TCP transports (Open MPI's BTL, Hydra's proxies) listen on ephemeral ports.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::TrainJob;
use crate::names::{self, TRAINJOB_NAME_LABEL};
use crate::plan::Plan;

/// The NetworkPolicy of `job`, named after it and owned by it.
pub fn network_policy(job: &TrainJob, plan: &Plan) -> NetworkPolicy {
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let this_job = LabelSelector {
        match_labels: Some([(TRAINJOB_NAME_LABEL.to_string(), job_name.clone())].into()),
        ..Default::default()
    };
    let declared: BTreeSet<(String, i32)> = plan
        .jobs
        .iter()
        .filter_map(|j| j.template.spec.as_ref())
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| {
            (
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.container_port,
            )
        })
        .collect();
    let ports = (!declared.is_empty()).then(|| {
        declared
            .into_iter()
            .map(|(protocol, port)| NetworkPolicyPort {
                protocol: Some(protocol),
                port: Some(IntOrString::Int(port)),
                ..Default::default()
            })
            .collect()
    });
    NetworkPolicy {
        metadata: names::child_meta(job, &job_name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(this_job.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(this_job),
                    ..Default::default()
                }]),
                ports,
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{job, plan, plan_with, runtime_pod};

    #[test]
    fn only_the_jobs_own_pods_may_connect_on_any_port_when_none_is_declared() {
        let j = job(json!({"trainer": {"numNodes": 2}}));
        let np = serde_json::to_value(network_policy(&j, &plan(&j, "mpi-openmpi"))).expect("json");
        assert_eq!(np["metadata"]["name"], "pi");
        assert_eq!(np["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            np["spec"],
            json!({
                "podSelector": {"matchLabels": {"trainer.kubeflow.org/trainjob-name": "pi"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"trainer.kubeflow.org/trainjob-name": "pi"}}}]}],
            })
        );
    }

    #[test]
    fn declared_ports_limit_the_rule() {
        let j = job(json!({"trainer": {"numNodes": 2}}));
        let port = |v: serde_json::Value| serde_json::from_value(v).expect("port");
        let p = plan_with(&j, "mpi-openmpi", |rt| {
            runtime_pod(rt, "launcher").containers[0].ports = Some(vec![port(json!({"containerPort": 22}))]);
            runtime_pod(rt, "node").containers[0].ports = Some(vec![
                port(json!({"containerPort": 22})),
                port(json!({"containerPort": 5353, "protocol": "UDP"})),
            ]);
        });
        let np = serde_json::to_value(network_policy(&j, &p)).expect("json");
        assert_eq!(
            np["spec"]["ingress"][0]["ports"],
            json!([{"port": 22, "protocol": "TCP"}, {"port": 5353, "protocol": "UDP"}])
        );
    }
}
