//! MPICH: Hydra (see `hydra`), configured through `HYDRA_*`; slots come from the `host:N`
//! hostfile lines alone.

use super::hydra::Hydra;
use super::{HOSTFILE_PATH, SSH_ARGS};
use crate::api::MPIImplementation;

const RESERVED: &[&str] = &[
    "HYDRA_HOST_FILE",
    "HYDRA_LAUNCHER_EXTRA_ARGS",
    // MPI Operator's misspelling, which Hydra never read: reserved so that a manifest setting
    // it learns that the operator owns the ssh options.
    "HYDRA_LAUNCH_EXTRA_ARGS",
];

/// See the module documentation.
pub struct Mpich;

impl Hydra for Mpich {
    fn api(&self) -> MPIImplementation {
        MPIImplementation::Mpich
    }

    fn name(&self) -> &'static str {
        "MPICH"
    }

    fn variables(&self, _slots: i32) -> Vec<(&'static str, String)> {
        vec![
            ("HYDRA_HOST_FILE", HOSTFILE_PATH.into()),
            ("HYDRA_LAUNCHER_EXTRA_ARGS", SSH_ARGS.into()),
        ]
    }

    fn reserved(&self) -> &'static [&'static str] {
        RESERVED
    }

    #[cfg(test)]
    fn cases(&self) -> super::tests::Cases {
        use super::Cause;
        super::tests::Cases {
            hostfile: &[("pi-node-0-1.pi", 2, "pi-node-0-1.pi:2")],
            env: &[
                ("HYDRA_HOST_FILE", "/etc/mpi/hostfile"),
                ("K_MPI_JOB_ROLE", "launcher"),
            ],
            diagnosis: &[
                (
                    "[proxy:0:0@pi-node-0-0] HYDU_sock_connect (lib/utils/sock.c:110): unable to get host address for pi-launcher-0-0 (1)",
                    Cause::Dns,
                ),
                (
                    "kex_exchange_identification: Connection closed by remote host",
                    Cause::Ssh,
                ),
                ("bash: line 1: hydra_pmi_proxy: command not found", Cause::Daemon),
            ],
        }
    }
}
