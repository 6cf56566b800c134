//! The MPI hostfile: one line per MPI host, in [`Plan::hosts`] order (rank 0 on the first).
//! Workers are pod DNS names `<pod>.<subdomain>` under the headless Service, as upstream. A
//! launcher that runs ranks is listed by its bare hostname, which its own `/etc/hosts` holds from
//! the start: listed by DNS name, mpirun could start before the launcher's own record exists,
//! fail to see the line as local and ssh to itself, where no sshd runs.

use std::collections::BTreeMap;
use std::fmt::Write;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::api::TrainJob;
use crate::names;
use crate::plan::Plan;

/// ConfigMap key of the hostfile.
pub const KEY: &str = "hostfile";

/// The hostfile text, one line per host in the implementation's format (`mpi`).
pub fn render(job: &str, plan: &Plan) -> String {
    let mut out = String::new();
    let launcher = plan.launcher();
    for (rjob, job_index, index) in plan.hosts() {
        let pod = names::pod(job, rjob, job_index, index);
        let host = if rjob == launcher {
            pod
        } else {
            format!("{pod}.{}", plan.subdomain)
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{}", plan.mpi().host_line(&host, plan.slots));
    }
    out
}

/// The ConfigMap `<job>-mpi-hostfile`; with the status server on, it also holds the CA the
/// pods verify it with (one ConfigMap per job, not two).
pub fn configmap(job: &TrainJob, plan: &Plan) -> ConfigMap {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let mut data = BTreeMap::from([(KEY.to_string(), render(name, plan))]);
    if let Some(reporting) = &plan.cluster.reporting {
        data.insert(super::reporting::CA_KEY.into(), reporting.ca.clone());
    }
    ConfigMap {
        metadata: names::child_meta(job, &names::hostfile_configmap(name)),
        data: Some(data),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{job, plan, plan_with};

    #[test]
    fn open_mpi_lists_each_worker_with_slots() {
        let j = job(json!({"trainer": {"numNodes": 4, "numProcPerNode": 2}}));
        assert_eq!(
            render("pi", &plan(&j, "mpi-openmpi")),
            "pi-node-0-0.pi slots=2\npi-node-0-1.pi slots=2\npi-node-0-2.pi slots=2\npi-node-0-3.pi slots=2\n"
        );
    }

    #[test]
    fn hydra_implementations_use_host_colon_slots() {
        for runtime in ["mpi-intel", "mpi-mpich"] {
            let j = job(
                json!({"runtimeRef": {"name": runtime}, "trainer": {"numNodes": 2, "numProcPerNode": 8}}),
            );
            assert_eq!(
                render("pi", &plan(&j, runtime)),
                "pi-node-0-0.pi:8\npi-node-0-1.pi:8\n",
                "{runtime}"
            );
        }
    }

    #[test]
    fn launcher_as_node_is_listed_first_by_its_bare_hostname() {
        let j = job(json!({"trainer": {"numNodes": 3}}));
        let p = plan_with(&j, "mpi-openmpi", |rt| {
            rt.ml_policy
                .as_mut()
                .and_then(|p| p.mpi.as_mut())
                .expect("mpi")
                .run_launcher_as_node = Some(true);
        });
        assert_eq!(
            render("pi", &p),
            "pi-launcher-0-0 slots=1\npi-node-0-0.pi slots=1\npi-node-0-1.pi slots=1\n"
        );
    }

    #[test]
    fn configmap_is_named_and_owned() {
        let j = job(json!({}));
        let cm = configmap(&j, &plan(&j, "mpi-openmpi"));
        assert_eq!(cm.metadata.name.as_deref(), Some("pi-mpi-hostfile"));
        assert_eq!(
            cm.metadata.owner_references.as_ref().map(|o| o[0].uid.as_str()),
            Some("uid-1")
        );
        assert!(cm.data.expect("data")[KEY].starts_with("pi-node-0-0.pi slots=1\n"));
    }
}
