//! Environment of the MPI containers: where the hostfile is, how many slots, how to reach the
//! workers, which variables to forward to remote ranks. Names follow MPI Operator v2 and Kubeflow
//! Trainer, plus Open MPI 5 (PRRTE), which ignores the `OMPI_MCA_orte_*` names and would silently
//! run every rank on the launcher (kubeflow/trainer#4028).

use k8s_openapi::api::core::v1::{Container, EnvVar};

use crate::api::MPIImplementation;

/// Where the hostfile ConfigMap is mounted in the launcher.
pub const HOSTFILE_DIR: &str = "/etc/mpi";
/// Path of the hostfile in the launcher.
pub const HOSTFILE_PATH: &str = "/etc/mpi/hostfile";
/// Role variable read by the MPI Operator base images' entrypoints (the Intel and MPICH images
/// wait for the hostfile's DNS names when it says `launcher`).
pub const ROLE_ENV: &str = "K_MPI_JOB_ROLE";
/// Open MPI's list of variables `mpirun` forwards to every rank (as `-x` does). sshd gives remote
/// processes a clean environment, so without it `spec.trainer.env` reaches only the launcher's
/// ranks. Hydra (Intel MPI, MPICH) forwards the whole launcher environment by default.
pub const OMPI_ENV_LIST: &str = "OMPI_MCA_mca_base_env_list";

/// ssh options for every implementation. Pods come and go with new host keys and the key mount
/// is read-only, so host keys are neither checked nor recorded (the job's own key pair
/// authenticates the workers); connections are retried while a worker's DNS record settles;
/// `LogLevel=ERROR` drops the "Permanently added" line each connection would log.
pub const SSH_ARGS: &str =
    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectionAttempts=10 -o LogLevel=ERROR";

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
    "HYDRA_LAUNCHER_EXTRA_ARGS",
    // MPI Operator's misspelling, which Hydra never read: reserved so that a manifest setting
    // it learns that the operator owns the ssh options.
    "HYDRA_LAUNCH_EXTRA_ARGS",
    ROLE_ENV,
];

/// Set on a launcher that may run as root, unless the job sets them: Open MPI refuses to start
/// as root without both (ORTE and PRRTE alike).
const OMPI_ROOT: &[(&str, &str)] = &[
    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
];

/// Blank on a launcher that runs no ranks, unless the job sets them, so that it does not hold
/// the node's GPUs through the NVIDIA runtime (as MPI Operator does).
const NO_GPUS: &[(&str, &str)] = &[("NVIDIA_VISIBLE_DEVICES", ""), ("NVIDIA_DRIVER_CAPABILITIES", "")];

/// What decides the launcher's environment besides the implementation.
#[derive(Clone, Copy, Debug)]
pub struct Launcher {
    /// MPI slots per host.
    pub slots: i32,
    /// Whether the launcher's user may be root (not known to be another uid).
    pub may_be_root: bool,
    /// Whether the launcher runs ranks itself.
    pub runs_ranks: bool,
}

/// The variables for the launcher's `node` container, given what it sets already (`existing`).
/// Operator variables replace same-named ones (resolve refuses reserved names in the job);
/// defaults (root permission, GPU blanking) never override the job's own.
pub fn launcher_env(
    implementation: MPIImplementation,
    launcher: Launcher,
    existing: &[EnvVar],
) -> Vec<EnvVar> {
    let slots = launcher.slots.to_string();
    let mut pairs: Vec<(&str, String)> = match implementation {
        MPIImplementation::OpenMPI => vec![
            // Open MPI 4 (ORTE).
            ("OMPI_MCA_orte_default_hostfile", HOSTFILE_PATH.into()),
            ("OMPI_MCA_orte_keep_fqdn_hostnames", "true".into()),
            ("OMPI_MCA_orte_set_default_slots", slots.clone()),
            ("OMPI_MCA_plm_rsh_args", SSH_ARGS.into()),
            // Open MPI 5 (PRRTE). The hostfile names are `<pod>.<subdomain>`, not FQDNs; PRRTE
            // must shorten them to match the hostnames its daemons report (kubeflow/trainer#4028).
            ("PRTE_MCA_prte_default_hostfile", HOSTFILE_PATH.into()),
            ("PRTE_MCA_prte_keep_fqdn_hostnames", "false".into()),
            ("PRTE_MCA_prte_set_default_slots", slots),
            ("PRTE_MCA_plm_ssh_args", SSH_ARGS.into()),
        ],
        MPIImplementation::Intel => vec![
            ("I_MPI_HYDRA_HOST_FILE", HOSTFILE_PATH.into()),
            ("I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS", SSH_ARGS.into()),
            ("I_MPI_PERHOST", slots),
        ],
        // MPICH's Hydra takes slots from the `host:N` hostfile lines only.
        MPIImplementation::Mpich => vec![
            ("HYDRA_HOST_FILE", HOSTFILE_PATH.into()),
            ("HYDRA_LAUNCHER_EXTRA_ARGS", SSH_ARGS.into()),
        ],
    };
    pairs.push((ROLE_ENV, "launcher".into()));
    if implementation == MPIImplementation::OpenMPI
        && let Some(list) = forwarded(existing)
    {
        pairs.push((OMPI_ENV_LIST, list));
    }
    let has = |name: &str| existing.iter().any(|e| e.name == name);
    let mut defaults: Vec<(&str, &str)> = Vec::new();
    if implementation == MPIImplementation::OpenMPI && launcher.may_be_root {
        defaults.extend(OMPI_ROOT);
    }
    if !launcher.runs_ranks {
        defaults.extend(NO_GPUS);
    }
    pairs
        .into_iter()
        .map(|(n, v)| var(n, &v))
        .chain(
            defaults
                .into_iter()
                .filter(|(n, _)| !has(n))
                .map(|(n, v)| var(n, v)),
        )
        .collect()
}

/// The `mca_base_env_list` value that forwards the launcher's own variables (from the runtime
/// and `spec.trainer.env`) to every rank: the job's list, if any, then each name not already
/// in it. Open MPI's own settings (`OMPI_*`, `PRTE_*`, read by mpirun itself) and operator
/// variables stay out; a name with `;` cannot be listed.
fn forwarded(existing: &[EnvVar]) -> Option<String> {
    let mut list: Vec<String> = existing
        .iter()
        .find(|e| e.name == OMPI_ENV_LIST)
        .and_then(|e| e.value.clone())
        .filter(|v| !v.is_empty())
        .into_iter()
        .collect();
    for e in existing {
        let name = e.name.as_str();
        let own = name.starts_with("OMPI_") || name.starts_with("PRTE_") || name.starts_with("PMIX_");
        let listed = list
            .iter()
            .any(|l| l.split(';').any(|n| n.split('=').next() == Some(name)));
        if own || listed || RESERVED_ENV.contains(&name) || name.contains(';') || name.is_empty() {
            continue;
        }
        list.push(name.to_string());
    }
    (!list.is_empty()).then(|| list.join(";"))
}

/// The variables for a worker's `node` container.
pub fn worker_env() -> Vec<EnvVar> {
    vec![var(ROLE_ENV, "worker")]
}

/// The container's environment so far.
pub fn of(container: &Container) -> &[EnvVar] {
    container.env.as_deref().unwrap_or_default()
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

    const USER: Launcher = Launcher {
        slots: 2,
        may_be_root: false,
        runs_ranks: false,
    };

    fn names(env: &[EnvVar]) -> Vec<&str> {
        env.iter().map(|e| e.name.as_str()).collect()
    }

    fn get<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    #[test]
    fn every_variable_set_is_reserved_or_a_default() {
        for implementation in [
            MPIImplementation::OpenMPI,
            MPIImplementation::Intel,
            MPIImplementation::Mpich,
        ] {
            for name in names(&launcher_env(implementation, USER, &[])) {
                let default = OMPI_ROOT.iter().chain(NO_GPUS).any(|(n, _)| *n == name);
                assert!(RESERVED_ENV.contains(&name) || default, "{name} must be reserved");
            }
        }
    }

    #[test]
    fn open_mpi_gets_orte_and_prrte_variables() {
        let env = launcher_env(MPIImplementation::OpenMPI, Launcher { slots: 4, ..USER }, &[]);
        assert_eq!(
            get(&env, "OMPI_MCA_orte_default_hostfile"),
            Some("/etc/mpi/hostfile")
        );
        assert_eq!(get(&env, "OMPI_MCA_orte_set_default_slots"), Some("4"));
        assert_eq!(
            get(&env, "PRTE_MCA_prte_default_hostfile"),
            Some("/etc/mpi/hostfile")
        );
        assert_eq!(get(&env, "PRTE_MCA_prte_set_default_slots"), Some("4"));
        assert_eq!(get(&env, "K_MPI_JOB_ROLE"), Some("launcher"));
    }

    #[test]
    fn every_implementation_gets_the_same_ssh_options() {
        let args = [
            (MPIImplementation::OpenMPI, "OMPI_MCA_plm_rsh_args"),
            (MPIImplementation::OpenMPI, "PRTE_MCA_plm_ssh_args"),
            (MPIImplementation::Intel, "I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS"),
            (MPIImplementation::Mpich, "HYDRA_LAUNCHER_EXTRA_ARGS"),
        ];
        for (implementation, name) in args {
            let env = launcher_env(implementation, USER, &[]);
            let value = get(&env, name).unwrap_or_default();
            for option in [
                "StrictHostKeyChecking=no",
                "UserKnownHostsFile=/dev/null",
                "ConnectionAttempts=",
            ] {
                assert!(value.contains(option), "{name}: {value}");
            }
        }
        assert!(RESERVED_ENV.contains(&"HYDRA_LAUNCH_EXTRA_ARGS"));
    }

    #[test]
    fn intel_and_mpich_use_hydra_variables() {
        let intel = launcher_env(MPIImplementation::Intel, Launcher { slots: 8, ..USER }, &[]);
        assert_eq!(get(&intel, "I_MPI_PERHOST"), Some("8"));
        assert_eq!(get(&intel, "I_MPI_HYDRA_HOST_FILE"), Some("/etc/mpi/hostfile"));
        let mpich = launcher_env(MPIImplementation::Mpich, USER, &[]);
        assert_eq!(get(&mpich, "HYDRA_HOST_FILE"), Some("/etc/mpi/hostfile"));
        assert_eq!(
            get(&mpich, OMPI_ENV_LIST),
            None,
            "Hydra forwards the environment itself"
        );
    }

    #[test]
    fn open_mpi_as_root_is_allowed_unless_the_job_says_otherwise() {
        let root = Launcher {
            may_be_root: true,
            ..USER
        };
        let env = launcher_env(MPIImplementation::OpenMPI, root, &[]);
        assert_eq!(get(&env, "OMPI_ALLOW_RUN_AS_ROOT"), Some("1"));
        assert_eq!(get(&env, "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"), Some("1"));
        let own = [var("OMPI_ALLOW_RUN_AS_ROOT", "0")];
        let env = launcher_env(MPIImplementation::OpenMPI, root, &own);
        assert_eq!(
            get(&env, "OMPI_ALLOW_RUN_AS_ROOT"),
            None,
            "the job's own value stays"
        );
        let user = launcher_env(MPIImplementation::OpenMPI, USER, &[]);
        assert_eq!(get(&user, "OMPI_ALLOW_RUN_AS_ROOT"), None);
        let intel = launcher_env(MPIImplementation::Intel, root, &[]);
        assert_eq!(get(&intel, "OMPI_ALLOW_RUN_AS_ROOT"), None);
    }

    #[test]
    fn a_launcher_without_ranks_gets_no_gpus_unless_asked() {
        let env = launcher_env(MPIImplementation::Mpich, USER, &[]);
        assert_eq!(get(&env, "NVIDIA_VISIBLE_DEVICES"), Some(""));
        let ranks = launcher_env(
            MPIImplementation::Mpich,
            Launcher {
                runs_ranks: true,
                ..USER
            },
            &[],
        );
        assert_eq!(get(&ranks, "NVIDIA_VISIBLE_DEVICES"), None);
        let own = [var("NVIDIA_VISIBLE_DEVICES", "all")];
        assert_eq!(
            get(
                &launcher_env(MPIImplementation::Mpich, USER, &own),
                "NVIDIA_VISIBLE_DEVICES"
            ),
            None
        );
    }

    #[test]
    fn open_mpi_forwards_the_jobs_variables_to_every_rank() {
        let own = [
            var("EPOCHS", "3"),
            var("OMPI_MCA_btl", "tcp,self"),
            var(OMPI_ENV_LIST, "LD_LIBRARY_PATH;EPOCHS"),
            var("DATA", "/data"),
        ];
        let env = launcher_env(MPIImplementation::OpenMPI, USER, &own);
        assert_eq!(get(&env, OMPI_ENV_LIST), Some("LD_LIBRARY_PATH;EPOCHS;DATA"));
        let none = launcher_env(MPIImplementation::OpenMPI, USER, &[]);
        assert_eq!(get(&none, OMPI_ENV_LIST), None);
    }
}
