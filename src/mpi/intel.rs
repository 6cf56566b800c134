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
                // A partitioned worker: ssh's keepalives end the session, and its end is reset
                // once the partition heals.
                (
                    "Timeout, server pi-node-0-1.pi not responding.\n\
[mpiexec@pi-launcher-0-0] HYD_sock_write (../../../../../src/pm/i_hydra/libhydra/sock/hydra_sock_intel.c:360): write error (Bad file descriptor)\n",
                    Cause::Connection,
                ),
                (
                    "Read from remote host pi-node-0-1.pi: Connection reset by peer\n\
client_loop: send disconnect: Broken pipe\n",
                    Cause::Connection,
                ),
                // Its Hydra's socket errors read as MPICH's ("write error (Bad file descriptor)"
                // after a crash, below): a read that timed out.
                (
                    "[mpiexec@pi-launcher-0-0] HYD_sock_read (../../../../../src/pm/i_hydra/libhydra/sock/hydra_sock_intel.c:297): read error (Connection timed out)\n",
                    Cause::Connection,
                ),
            ],
            program_failures: &[
                "[mpiexec@pi-launcher-0-0] wait_proxies_to_terminate (../../../../../src/pm/i_hydra/mpiexec/intel/i_mpiexec.c:537): downstream from host pi-node-0-1 exited with status 139\n\
[mpiexec@pi-launcher-0-0] main (../../../../../src/pm/i_hydra/mpiexec/mpiexec.c:2125): assert (pg->intel.exitcodes != NULL) failed\n\
[mpiexec@pi-launcher-0-0] HYD_sock_write (../../../../../src/pm/i_hydra/libhydra/sock/hydra_sock_intel.c:360): write error (Bad file descriptor)\n",
            ],
        }
    }
}
