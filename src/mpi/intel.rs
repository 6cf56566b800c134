//! Intel MPI: Hydra (see `hydra`), configured through `I_MPI_HYDRA_*`; `I_MPI_PERHOST` places
//! the slots, since Intel's Hydra does not read them from the hostfile by default.

use super::hydra::Hydra;
use super::{HOSTFILE_PATH, SSH_ARGS};
use crate::api::MPIImplementation;

const RESERVED: &[&str] = &[
    "I_MPI_HYDRA_HOST_FILE",
    "I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS",
    "I_MPI_PERHOST",
];

/// See the module documentation.
pub struct IntelMpi;

impl Hydra for IntelMpi {
    fn api(&self) -> MPIImplementation {
        MPIImplementation::Intel
    }

    fn name(&self) -> &'static str {
        "Intel MPI"
    }

    fn variables(&self, slots: i32) -> Vec<(&'static str, String)> {
        vec![
            ("I_MPI_HYDRA_HOST_FILE", HOSTFILE_PATH.into()),
            ("I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS", SSH_ARGS.into()),
            ("I_MPI_PERHOST", slots.to_string()),
        ]
    }

    fn reserved(&self) -> &'static [&'static str] {
        RESERVED
    }

    #[cfg(test)]
    fn cases(&self) -> super::tests::Cases {
        use super::Cause;
        super::tests::Cases {
            hostfile: &[("pi-node-0-0.pi", 8, "pi-node-0-0.pi:8")],
            env: &[
                ("I_MPI_HYDRA_HOST_FILE", "/etc/mpi/hostfile"),
                ("I_MPI_PERHOST", "4"),
                ("K_MPI_JOB_ROLE", "launcher"),
            ],
            diagnosis: &[
                (
                    "[proxy:0:0@pi-node-0-0] HYDU_sock_connect (../../../../../src/pm/i_hydra/libhydra/sock/hydra_sock_intel.c:208): unable to get host address for pi-launcher-0-0 (1)",
                    Cause::Dns,
                ),
                (
                    "[mpiexec@pi-launcher-0-0] HYD_sock_connect (..): getaddrinfo returned error -2 (Name or service not known)",
                    Cause::Dns,
                ),
                (
                    "ssh: connect to host pi-node-0-0.pi port 2222: Connection refused",
                    Cause::Ssh,
                ),
                ("bash: hydra_pmi_proxy: command not found", Cause::Daemon),
            ],
        }
    }
}
