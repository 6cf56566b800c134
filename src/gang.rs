//! Gang scheduling objects, pure builders. Native Kubernetes gang scheduling (KEP-4671,
//! `scheduling.k8s.io/v1alpha2`): a `Workload` with one pod group template and a `PodGroup` whose
//! gang policy kube-scheduler enforces: either `minCount` pods of the group are bound together,
//! or none is. scheduler-plugins coscheduling: a `scheduling.x-k8s.io/v1alpha1` PodGroup with
//! `minMember`, `minResources` and `scheduleTimeoutSeconds`, named by the pods' label.
//!
//! The gang is the job's `node` pods (the MPI workers). The launcher is created only once every
//! worker is Ready, so it cannot be in a gang the workers wait for; it runs no ranks unless
//! `runLauncherAsNode`, and then it is placed after the workers, like any other pod.

use k8s_openapi::api::scheduling::v1alpha2::{
    GangSchedulingPolicy, PodGroup, PodGroupSchedulingPolicy, PodGroupSpec, PodGroupTemplate,
    PodGroupTemplateReference, TypedLocalObjectReference, Workload, WorkloadPodGroupTemplateReference,
    WorkloadSpec,
};

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use crate::api::{GROUP, TrainJob};
use crate::plan::{Plan, Role};
use crate::{names, quota};

/// The label by which coscheduling finds a pod's PodGroup.
pub const COSCHEDULING_LABEL: &str = "scheduling.x-k8s.io/pod-group";

/// The coscheduling PodGroup's API.
pub fn coscheduling_api() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("scheduling.x-k8s.io", "v1alpha1", "PodGroup"),
        "podgroups",
    )
}

/// Name of the Workload's only pod group template.
pub const TEMPLATE: &str = "node";

/// The Workload and the PodGroup of a job, both named after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Gang {
    /// The Workload: the job's description for the scheduler.
    pub workload: Workload,
    /// The PodGroup the worker pods name in `spec.schedulingGroup`.
    pub pod_group: PodGroup,
}

/// How many pods must be bound together, when the runtime asks for a native gang and there is
/// more than one worker.
pub fn min_count(plan: &Plan) -> Option<i32> {
    plan.gang.as_ref().and_then(|g| g.workload.as_ref())?;
    gang_size(plan)
}

/// The number of workers, when there is more than one to gang.
fn gang_size(plan: &Plan) -> Option<i32> {
    let workers = plan.job(Role::Node).map_or(0, |j| j.pods());
    i32::try_from(workers).ok().filter(|n| *n > 1)
}

/// The number of workers when the runtime asks for coscheduling and there is more than one.
pub fn coscheduling_members(plan: &Plan) -> Option<i32> {
    plan.gang.as_ref().and_then(|g| g.coscheduling.as_ref())?;
    gang_size(plan)
}

/// The coscheduling PodGroup for the job's `workers` (the pods as built): every worker is a
/// member, `minResources` is what they request together, and the runtime's timeout.
pub fn coscheduling(job: &TrainJob, plan: &Plan, workers: &[Pod]) -> Option<DynamicObject> {
    let members = coscheduling_members(plan)?;
    let timeout = plan
        .gang
        .as_ref()
        .and_then(|g| g.coscheduling.as_ref())
        .and_then(|c| c.schedule_timeout_seconds);
    let resources: BTreeMap<String, String> = quota::requests(workers)
        .into_iter()
        .map(|(name, v)| (name, quota::format(v)))
        .collect();
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let mut group = DynamicObject::new(&pod_group_name(name), &coscheduling_api());
    group.metadata = names::child_meta(job, &pod_group_name(name));
    let mut spec = json!({"minMember": members, "minResources": resources});
    if let Some(timeout) = timeout {
        spec["scheduleTimeoutSeconds"] = json!(timeout);
    }
    group.data = json!({"spec": spec});
    Some(group)
}

/// The PodGroup name worker pods carry (the job's name).
pub fn pod_group_name(job: &str) -> String {
    job.to_string()
}

/// The job's gang objects, or `None` when it has no native gang.
pub fn gang(job: &TrainJob, plan: &Plan) -> Option<Gang> {
    let min_count = min_count(plan)?;
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let policy = PodGroupSchedulingPolicy {
        gang: Some(GangSchedulingPolicy { min_count }),
        ..Default::default()
    };
    let workload = Workload {
        metadata: names::child_meta(job, name),
        spec: WorkloadSpec {
            controller_ref: Some(TypedLocalObjectReference {
                api_group: Some(GROUP.into()),
                kind: "TrainJob".into(),
                name: name.into(),
            }),
            pod_group_templates: vec![PodGroupTemplate {
                name: TEMPLATE.into(),
                scheduling_policy: policy.clone(),
                ..Default::default()
            }],
        },
    };
    let pod_group = PodGroup {
        metadata: names::child_meta(job, &pod_group_name(name)),
        spec: PodGroupSpec {
            pod_group_template_ref: Some(PodGroupTemplateReference {
                workload: Some(WorkloadPodGroupTemplateReference {
                    workload_name: name.into(),
                    pod_group_template_name: TEMPLATE.into(),
                }),
            }),
            scheduling_policy: policy,
            ..Default::default()
        },
        status: None,
    };
    Some(Gang { workload, pod_group })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::{PodGroupPolicy, WorkloadPodGroupPolicySource};
    use crate::fixtures::{job, plan};

    fn native(nodes: i32) -> (TrainJob, Plan) {
        let j = job(json!({"trainer": {"numNodes": nodes}}));
        let mut p = plan(&j, "mpi-openmpi");
        p.gang = Some(PodGroupPolicy {
            workload: Some(WorkloadPodGroupPolicySource::default()),
            ..Default::default()
        });
        (j, p)
    }

    #[test]
    fn workers_form_one_gang_owned_by_the_job() {
        let (j, p) = native(4);
        let g = gang(&j, &p).expect("gang");
        let owner = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.owner_references
                .as_ref()
                .map(|o| (o[0].kind.clone(), o[0].controller))
        };
        assert_eq!(owner(&g.workload.metadata), Some(("TrainJob".into(), Some(true))));
        assert_eq!(
            owner(&g.pod_group.metadata),
            Some(("TrainJob".into(), Some(true)))
        );
        let template = &g.workload.spec.pod_group_templates[0];
        assert_eq!(template.name, "node");
        assert_eq!(
            template.scheduling_policy.gang.as_ref().map(|g| g.min_count),
            Some(4)
        );
        assert_eq!(g.pod_group.spec.scheduling_policy, template.scheduling_policy);
        let reference = g
            .pod_group
            .spec
            .pod_group_template_ref
            .and_then(|r| r.workload)
            .expect("ref");
        assert_eq!(
            (
                reference.workload_name.as_str(),
                reference.pod_group_template_name.as_str()
            ),
            ("pi", "node")
        );
        let controller = g.workload.spec.controller_ref.expect("controllerRef");
        assert_eq!(
            (
                controller.api_group.as_deref(),
                controller.kind.as_str(),
                controller.name.as_str()
            ),
            (Some("trainer.kubeflow.org"), "TrainJob", "pi")
        );
    }

    #[test]
    fn coscheduling_groups_every_worker_with_their_requests_and_timeout() {
        let j = job(
            json!({"trainer": {"numNodes": 3, "resourcesPerNode": {"requests": {"cpu": "1500m", "nvidia.com/gpu": "8"}}}}),
        );
        let mut p = plan(&j, "mpi-openmpi");
        p.gang = Some(PodGroupPolicy {
            coscheduling: Some(crate::api::CoschedulingPodGroupPolicySource {
                schedule_timeout_seconds: Some(90),
            }),
            ..Default::default()
        });
        let node = p.job(Role::Node).expect("node").clone();
        let workers: Vec<Pod> = node
            .indices()
            .map(|at| crate::pods::pod(&j, &p, &node, at, 0))
            .collect();
        let label = workers[0]
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(COSCHEDULING_LABEL));
        assert_eq!(label.map(String::as_str), Some("pi"));
        let group = coscheduling(&j, &p, &workers).expect("PodGroup");
        assert_eq!(group.metadata.name.as_deref(), Some("pi"));
        assert_eq!(
            group.types.as_ref().map(|t| t.api_version.as_str()),
            Some("scheduling.x-k8s.io/v1alpha1")
        );
        assert_eq!(
            group.data["spec"],
            json!({"minMember": 3, "minResources": {"cpu": "4500m", "nvidia.com/gpu": "24"}, "scheduleTimeoutSeconds": 90})
        );
        assert!(gang(&j, &p).is_none(), "no native gang with coscheduling");
    }

    #[test]
    fn no_gang_without_the_policy_or_with_one_worker() {
        let j = job(json!({"trainer": {"numNodes": 4}}));
        assert!(gang(&j, &plan(&j, "mpi-openmpi")).is_none());
        let (j, p) = native(1);
        assert!(gang(&j, &p).is_none());
    }
}
