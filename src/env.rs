//! Environment of the MPI containers: where the hostfile is, how many slots, how to reach the
//! workers. Names follow MPI Operator v2 and Kubeflow Trainer, plus Open MPI 5 (PRRTE), which
//! ignores the `OMPI_MCA_orte_*` names and would silently run every rank on the launcher
//! (kubeflow/trainer#4028).

use k8s_openapi::api::core::v1::EnvVar;

use crate::api::MPIImplementation;

/// Where the hostfile ConfigMap is mounted in the launcher.
pub const HOSTFILE_DIR: &str = "/etc/mpi";
/// Path of the hostfile in the launcher.
pub const HOSTFILE_PATH: &str = "/etc/mpi/hostfile";
/// Role variable read by the MPI Operator base images' entrypoints (the Intel and MPICH images
/// wait for the hostfile's DNS names when it says `launcher`).
pub const ROLE_ENV: &str = "K_MPI_JOB_ROLE";

/// SSH options for reaching workers whose DNS record may still be settling.
const SSH_ARGS: &str = "-o ConnectionAttempts=10";

/// Every name the operator sets; a TrainJob may not set them itself.
pub const RESERVED_ENV: &[&str] = &[
    "OMPI_MCA_orte_default_hostfile",
    "OMPI_MCA_orte_keep_fqdn_hostnames",
    "OMPI_MCA_orte_set_default_slots",
    "OMPI_MCA_plm_rsh_args",
    "PRTE_MCA_prte_default_hostfile",
    "PRTE_MCA_prte_keep_fqdn_hostnames",
    "PRTE_MCA_prte_set_default_slots",
    "PRTE_MCA_plm_ssh_args",
    "I_MPI_HYDRA_HOST_FILE",
    "I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS",
    "I_MPI_PERHOST",
    "HYDRA_HOST_FILE",
    "HYDRA_LAUNCH_EXTRA_ARGS",
    ROLE_ENV,
];

/// The variables for the launcher's `node` container.
pub fn launcher_env(implementation: MPIImplementation, slots: i32) -> Vec<EnvVar> {
    let slots = slots.to_string();
    let pairs: Vec<(&str, &str)> = match implementation {
        MPIImplementation::OpenMPI => vec![
            // Open MPI 4 (ORTE).
            ("OMPI_MCA_orte_default_hostfile", HOSTFILE_PATH),
            ("OMPI_MCA_orte_keep_fqdn_hostnames", "true"),
            ("OMPI_MCA_orte_set_default_slots", &slots),
            ("OMPI_MCA_plm_rsh_args", SSH_ARGS),
            // Open MPI 5 (PRRTE). The hostfile names are `<pod>.<subdomain>`, not FQDNs; PRRTE
            // must shorten them to match the hostnames its daemons report (kubeflow/trainer#4028).
            ("PRTE_MCA_prte_default_hostfile", HOSTFILE_PATH),
            ("PRTE_MCA_prte_keep_fqdn_hostnames", "false"),
            ("PRTE_MCA_prte_set_default_slots", &slots),
            ("PRTE_MCA_plm_ssh_args", SSH_ARGS),
        ],
        MPIImplementation::Intel => vec![
            ("I_MPI_HYDRA_HOST_FILE", HOSTFILE_PATH),
            ("I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS", SSH_ARGS),
            ("I_MPI_PERHOST", &slots),
        ],
        // MPICH's Hydra takes slots from the `host:N` hostfile lines only.
        MPIImplementation::Mpich => {
            vec![
                ("HYDRA_HOST_FILE", HOSTFILE_PATH),
                ("HYDRA_LAUNCH_EXTRA_ARGS", SSH_ARGS),
            ]
        }
    };
    pairs
        .into_iter()
        .chain([(ROLE_ENV, "launcher")])
        .map(|(n, v)| var(n, v))
        .collect()
}

/// The variables for a worker's `node` container.
pub fn worker_env() -> Vec<EnvVar> {
    vec![var(ROLE_ENV, "worker")]
}

fn var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(env: &[EnvVar]) -> Vec<&str> {
        env.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn every_variable_set_is_reserved() {
        for implementation in [
            MPIImplementation::OpenMPI,
            MPIImplementation::Intel,
            MPIImplementation::Mpich,
        ] {
            for name in names(&launcher_env(implementation, 2)) {
                assert!(RESERVED_ENV.contains(&name), "{name} must be reserved");
            }
        }
    }

    #[test]
    fn open_mpi_gets_orte_and_prrte_variables() {
        let env = launcher_env(MPIImplementation::OpenMPI, 4);
        let get = |n: &str| env.iter().find(|e| e.name == n).and_then(|e| e.value.clone());
        assert_eq!(
            get("OMPI_MCA_orte_default_hostfile").as_deref(),
            Some("/etc/mpi/hostfile")
        );
        assert_eq!(get("OMPI_MCA_orte_set_default_slots").as_deref(), Some("4"));
        assert_eq!(
            get("PRTE_MCA_prte_default_hostfile").as_deref(),
            Some("/etc/mpi/hostfile")
        );
        assert_eq!(get("PRTE_MCA_prte_set_default_slots").as_deref(), Some("4"));
        assert_eq!(
            get("PRTE_MCA_plm_ssh_args").as_deref(),
            Some("-o ConnectionAttempts=10")
        );
        assert_eq!(get("K_MPI_JOB_ROLE").as_deref(), Some("launcher"));
    }

    #[test]
    fn intel_and_mpich_use_hydra_variables() {
        let intel = launcher_env(MPIImplementation::Intel, 8);
        assert!(
            intel
                .iter()
                .any(|e| e.name == "I_MPI_PERHOST" && e.value.as_deref() == Some("8"))
        );
        assert!(intel.iter().any(|e| e.name == "I_MPI_HYDRA_HOST_FILE"));
        assert_eq!(
            names(&launcher_env(MPIImplementation::Mpich, 8)),
            ["HYDRA_HOST_FILE", "HYDRA_LAUNCH_EXTRA_ARGS", "K_MPI_JOB_ROLE"]
        );
    }
}
