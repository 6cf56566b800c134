//! Open MPI 4 (ORTE) and 5 (PRRTE), one `mpiImplementation: OpenMPI`. The launcher gets both
//! families of variables: Open MPI 5 ignores the `OMPI_MCA_orte_*` names and would silently run
//! every rank on the launcher (kubeflow/trainer#4028). sshd gives remote ranks a clean
//! environment, so the job's variables are forwarded by name (as `mpirun -x` would).

use k8s_openapi::api::core::v1::EnvVar;

use super::{Cause, HOSTFILE_PATH, Implementation, SSH_ARGS};
use crate::api::MPIImplementation;

/// Open MPI's list of variables `mpirun` forwards to every rank.
pub const ENV_LIST: &str = "OMPI_MCA_mca_base_env_list";

const RESERVED: &[&str] = &[
    "OMPI_MCA_orte_default_hostfile",
    "OMPI_MCA_orte_keep_fqdn_hostnames",
    "OMPI_MCA_orte_set_default_slots",
    "OMPI_MCA_plm_rsh_args",
    "PRTE_MCA_prte_default_hostfile",
    "PRTE_MCA_prte_keep_fqdn_hostnames",
    "PRTE_MCA_prte_set_default_slots",
    "PRTE_MCA_plm_ssh_args",
];

/// Open MPI refuses to start as root without both (ORTE and PRRTE alike).
const ROOT: &[(&str, &str)] = &[
    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
];

/// The daemon ORTE or PRRTE starts on each worker could not run there: the worker's image lacks
/// the launcher's Open MPI (or its `PATH` in a non-interactive ssh session does).
const PATTERNS: &[(Cause, &str)] = &[
    (Cause::Daemon, "orted: command not found"),
    (Cause::Daemon, "prted: command not found"),
    (
        Cause::Daemon,
        "ORTE was unable to reliably start one or more daemons",
    ),
    (Cause::Daemon, "PRTE has lost communication with a remote daemon"),
];

/// See the module documentation.
pub struct OpenMpi;

impl Implementation for OpenMpi {
    fn api(&self) -> MPIImplementation {
        MPIImplementation::OpenMPI
    }

    fn name(&self) -> &'static str {
        "Open MPI"
    }

    fn host_line(&self, host: &str, slots: i32) -> String {
        format!("{host} slots={slots}")
    }

    fn variables(&self, slots: i32) -> Vec<(&'static str, String)> {
        let slots = slots.to_string();
        vec![
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
        ]
    }

    fn reserved(&self) -> &'static [&'static str] {
        RESERVED
    }

    fn root_defaults(&self) -> &'static [(&'static str, &'static str)] {
        ROOT
    }

    fn forward(&self, existing: &[EnvVar]) -> Option<(&'static str, String)> {
        forwarded(existing).map(|list| (ENV_LIST, list))
    }

    fn remote_daemon(&self) -> &'static str {
        "orted (Open MPI 4) or prted (Open MPI 5)"
    }

    fn log_patterns(&self) -> &'static [(Cause, &'static str)] {
        PATTERNS
    }

    #[cfg(test)]
    fn cases(&self) -> super::tests::Cases {
        super::tests::Cases {
            hostfile: &[("pi-node-0-1.pi", 2, "pi-node-0-1.pi slots=2")],
            env: &[
                ("OMPI_MCA_orte_default_hostfile", "/etc/mpi/hostfile"),
                ("OMPI_MCA_orte_set_default_slots", "4"),
                ("PRTE_MCA_prte_default_hostfile", "/etc/mpi/hostfile"),
                ("PRTE_MCA_prte_keep_fqdn_hostnames", "false"),
                ("PRTE_MCA_prte_set_default_slots", "4"),
                ("K_MPI_JOB_ROLE", "launcher"),
            ],
            diagnosis: &[
                (
                    "ssh: Could not resolve hostname pi-node-0-1.pi: Name or service not known\nORTE was unable to reliably start one or more daemons.",
                    Cause::Dns,
                ),
                ("bash: line 1: orted: command not found", Cause::Daemon),
                ("bash: line 1: prted: command not found", Cause::Daemon),
                (
                    "PRTE has lost communication with a remote daemon.\n  HNP daemon   : [prterun-pi-launcher-0-0-1@0] on node pi-launcher-0-0",
                    Cause::Daemon,
                ),
                (
                    "mpiuser@pi-node-0-0: Permission denied (publickey).\nORTE was unable to reliably start one or more daemons.",
                    Cause::Key,
                ),
            ],
        }
    }
}

/// The `mca_base_env_list` value that forwards the launcher's own variables (from the runtime
/// and `spec.trainer.env`) to every rank: the job's list, if any, then each name not already
/// in it. Open MPI's own settings (`OMPI_*`, `PRTE_*`, read by mpirun itself) and operator
/// variables stay out; a name with `;` cannot be listed.
fn forwarded(existing: &[EnvVar]) -> Option<String> {
    let mut list: Vec<String> = existing
        .iter()
        .find(|e| e.name == ENV_LIST)
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
        if own || listed || super::is_reserved(name) || name.contains(';') || name.is_empty() {
            continue;
        }
        list.push(name.to_string());
    }
    (!list.is_empty()).then(|| list.join(";"))
}
