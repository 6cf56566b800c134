//! Gang scheduling objects, pure builders. Native Kubernetes gang scheduling (KEP-4671,
//! `scheduling.k8s.io/v1alpha2`): a `Workload` with one pod group template and a `PodGroup` whose
//! gang policy kube-scheduler enforces: either `minCount` pods of the group are bound together,
//! or none is. Scheduler plugins, each with a PodGroup of its own named after the job:
//! scheduler-plugins coscheduling (`scheduling.x-k8s.io/v1alpha1`; `minMember`, `minResources`,
//! `scheduleTimeoutSeconds`; pods join by label) and Volcano (`scheduling.volcano.sh/v1beta1`;
//! `minMember`, `minResources`, `queue`, `priorityClassName`, `networkTopology`; pods join by
//! annotation and are scheduled by `volcano` unless the runtime names another scheduler).
//!
//! The gang is the job's MPI hosts: the `node` pods (the workers), and the launcher too when it
//! runs ranks (`runLauncherAsNode`), since a launcher that cannot be placed leaves the workers
//! holding their nodes for nothing. Such a launcher is then created with the workers (a gang
//! forms only once its members exist) and waits in an init container until it can reach every
//! worker over SSH. A launcher that runs no ranks stays out: it is created once the workers are
//! Ready, needs next to nothing, and a gang could not wait for a pod created after it.

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
use crate::plan::Plan;
use crate::{names, quota};

/// The label by which coscheduling finds a pod's PodGroup.
pub const COSCHEDULING_LABEL: &str = "scheduling.x-k8s.io/pod-group";
/// The annotation by which Volcano finds a pod's PodGroup.
pub const VOLCANO_GROUP_ANNOTATION: &str = "scheduling.k8s.io/group-name";
/// The annotation on a runtime's (or runtime patch's) template that names the Volcano queue.
pub const VOLCANO_QUEUE_ANNOTATION: &str = "scheduling.volcano.sh/queue-name";
/// Volcano's scheduler name, given to pods whose template names no scheduler.
pub const VOLCANO_SCHEDULER: &str = "volcano";

/// A scheduler plugin that gangs pods through a PodGroup of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// scheduler-plugins coscheduling.
    Coscheduling,
    /// Volcano.
    Volcano,
}

impl Plugin {
    /// The plugin the runtime's `podGroupPolicy` asks for.
    pub fn of(plan: &Plan) -> Option<Plugin> {
        let policy = plan.gang.as_ref()?;
        if policy.coscheduling.is_some() {
            Some(Plugin::Coscheduling)
        } else if policy.volcano.is_some() {
            Some(Plugin::Volcano)
        } else {
            None
        }
    }

    /// The plugin's PodGroup API.
    pub fn api(self) -> ApiResource {
        let gvk = match self {
            Plugin::Coscheduling => GroupVersionKind::gvk("scheduling.x-k8s.io", "v1alpha1", "PodGroup"),
            Plugin::Volcano => GroupVersionKind::gvk("scheduling.volcano.sh", "v1beta1", "PodGroup"),
        };
        ApiResource::from_gvk_with_plural(&gvk, "podgroups")
    }

    /// The `podGroupPolicy` field that selects it.
    pub fn policy(self) -> &'static str {
        match self {
            Plugin::Coscheduling => "coscheduling",
            Plugin::Volcano => "volcano",
        }
    }

    /// The API, for messages when the cluster does not serve it.
    pub fn api_name(self) -> &'static str {
        match self {
            Plugin::Coscheduling => "scheduling.x-k8s.io/v1alpha1 PodGroups",
            Plugin::Volcano => "scheduling.volcano.sh/v1beta1 PodGroups",
        }
    }

    /// What installs the API.
    pub fn install_hint(self) -> &'static str {
        match self {
            Plugin::Coscheduling => "install scheduler-plugins with its coscheduling plugin",
            Plugin::Volcano => "install Volcano",
        }
    }
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

/// The scheduler plugin and the number of gang members, when the runtime asks for a plugin's
/// gang and there is more than one member.
pub fn plugin_members(plan: &Plan) -> Option<(Plugin, i32)> {
    Some((Plugin::of(plan)?, plan.gang_size()?))
}

/// The plugin's PodGroup for the gang's `members` (the pods as built): `minMember` counts them
/// all and `minResources` is what they request together. Coscheduling adds the runtime's
/// timeout; Volcano the queue, the pods' priority class and the network topology.
pub fn plugin_pod_group(job: &TrainJob, plan: &Plan, members: &[Pod]) -> Option<(Plugin, DynamicObject)> {
    let (plugin, count) = plugin_members(plan)?;
    let policy = plan.gang.as_ref()?;
    let resources: BTreeMap<String, String> = quota::requests(members)
        .into_iter()
        .map(|(name, v)| (name, quota::format(v)))
        .collect();
    let mut spec = json!({"minMember": count, "minResources": resources});
    match plugin {
        Plugin::Coscheduling => {
            if let Some(timeout) = policy
                .coscheduling
                .as_ref()
                .and_then(|c| c.schedule_timeout_seconds)
            {
                spec["scheduleTimeoutSeconds"] = json!(timeout);
            }
        }
        Plugin::Volcano => {
            if let Some(queue) = &plan.volcano_queue {
                spec["queue"] = json!(queue);
            }
            // As upstream: the last pod template that names a priority class.
            let priority = plan
                .jobs
                .iter()
                .rev()
                .find_map(|j| j.template.spec.as_ref()?.priority_class_name.clone());
            if let Some(priority) = priority {
                spec["priorityClassName"] = json!(priority);
            }
            if let Some(topology) = policy.volcano.as_ref().and_then(|v| v.network_topology.as_ref()) {
                spec["networkTopology"] = serde_json::to_value(topology).unwrap_or_default();
            }
        }
    }
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let mut group = DynamicObject::new(&pod_group_name(name), &plugin.api());
    group.metadata = names::child_meta(job, &pod_group_name(name));
    group.data = json!({"spec": spec});
    Some((plugin, group))
}

/// The PodGroup name worker pods carry (the job's name).
pub fn pod_group_name(job: &str) -> String {
    job.to_string()
}

/// The job's gang objects, or `None` when it has no native gang.
pub fn gang(job: &TrainJob, plan: &Plan) -> Option<Gang> {
    let min_count = plan.native_gang()?;
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
    use crate::plan::Role;

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
            .map(|at| crate::desired::pods::pod(&j, &p, &node, at, 0))
            .collect();
        let label = workers[0]
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(COSCHEDULING_LABEL));
        assert_eq!(label.map(String::as_str), Some("pi"));
        let (plugin, group) = plugin_pod_group(&j, &p, &workers).expect("PodGroup");
        assert_eq!(plugin, Plugin::Coscheduling);
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
    fn volcano_groups_every_worker_with_queue_priority_and_topology() {
        let mut j = job(json!({"trainer": {"numNodes": 2, "resourcesPerNode": {"requests": {"cpu": "2"}}}}));
        // A runtime patch's queue wins over the runtime's, as upstream.
        j.spec.runtime_patches = serde_json::from_value(json!([{
            "manager": "example.com/queues",
            "trainingRuntimeSpec": {"template": {"metadata": {"annotations": {VOLCANO_QUEUE_ANNOTATION: "research"}}}},
        }]))
        .expect("patches");
        let mut p = crate::fixtures::plan_with(&j, "mpi-openmpi", |rt| {
            rt.template.metadata = Some(crate::api::TemplateMetadata {
                annotations: [(VOLCANO_QUEUE_ANNOTATION.to_string(), "default".to_string())].into(),
                ..Default::default()
            });
            rt.pod_group_policy = Some(PodGroupPolicy {
                volcano: Some(crate::api::VolcanoPodGroupPolicySource {
                    network_topology: Some(crate::api::NetworkTopologySpec {
                        mode: Some("hard".into()),
                        highest_tier_allowed: Some(2),
                    }),
                }),
                ..Default::default()
            });
        });
        let node = p.jobs.iter_mut().find(|j| j.role == Role::Node).expect("node");
        node.template.spec.get_or_insert_default().priority_class_name = Some("training".into());
        let node = p.job(Role::Node).expect("node").clone();
        let workers: Vec<Pod> = node
            .indices()
            .map(|at| crate::desired::pods::pod(&j, &p, &node, at, 0))
            .collect();
        for w in &workers {
            let annotations = w.metadata.annotations.as_ref().expect("annotations");
            assert_eq!(
                annotations.get(VOLCANO_GROUP_ANNOTATION).map(String::as_str),
                Some("pi")
            );
            let scheduler = w.spec.as_ref().and_then(|s| s.scheduler_name.as_deref());
            assert_eq!(scheduler, Some(VOLCANO_SCHEDULER));
        }
        let (plugin, group) = plugin_pod_group(&j, &p, &workers).expect("PodGroup");
        assert_eq!(plugin, Plugin::Volcano);
        assert_eq!(
            group.types.as_ref().map(|t| t.api_version.as_str()),
            Some("scheduling.volcano.sh/v1beta1")
        );
        assert_eq!(
            group.data["spec"],
            json!({
                "minMember": 2, "minResources": {"cpu": "4"}, "queue": "research",
                "priorityClassName": "training",
                "networkTopology": {"mode": "hard", "highestTierAllowed": 2},
            })
        );
    }

    #[test]
    fn no_gang_without_the_policy_or_with_one_worker() {
        let j = job(json!({"trainer": {"numNodes": 4}}));
        assert!(gang(&j, &plan(&j, "mpi-openmpi")).is_none());
        let (j, p) = native(1);
        assert!(gang(&j, &p).is_none());
    }
}
