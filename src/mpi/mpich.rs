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
                // A partitioned worker: ssh's keepalives end mpiexec's session to its proxy.
                (
                    "Timeout, server pi-node-0-1.pi not responding.",
                    Cause::Connection,
                ),
                // mpiexec's control socket to a proxy timed out.
                (
                    "[mpiexec@pi-launcher-0-0] HYDU_sock_read (lib/utils/sock.c:206): read error (Connection timed out)\n\
[mpiexec@pi-launcher-0-0] control_cb (mpiexec/pmiserv_cb.c:279): unable to read command from proxy\n\
[mpiexec@pi-launcher-0-0] HYDT_dmxu_poll_wait_for_event (lib/tools/demux/demux_poll.c:76): callback returned error status\n\
[mpiexec@pi-launcher-0-0] HYD_pmci_wait_for_completion (mpiexec/pmiserv_pmci.c:180): error waiting for event\n\
[mpiexec@pi-launcher-0-0] main (mpiexec/mpiexec.c:261): process manager error waiting for completion\n",
                    Cause::Connection,
                ),
                // A rank's UCX link to another timed out.
                (
                    "Abort(806995727) on node 1: Fatal error in internal_Allreduce: Other MPI error, error stack:\n\
internal_Allreduce(4713)...: MPI_Allreduce(sendbuf=0x7ffc1b2c, recvbuf=0x7ffc1b34, count=1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD) failed\n\
MPIDI_UCX_progress(108)....: ucx function returned with failed status(ucx_progress.h 108 MPIDI_UCX_progress Endpoint timeout)\n",
                    Cause::Connection,
                ),
            ],
            program_failures: &["Traceback (most recent call last):\n\
  File \"/home/mpiuser/train\", line 12, in <module>\n\
ZeroDivisionError: division by zero\n\n\
===================================================================================\n\
=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n\
=   PID 88 RUNNING AT pi-node-0-1\n\
=   EXIT CODE: 1\n\
=   CLEANING UP REMAINING PROCESSES\n\
=   YOU CAN IGNORE THE BELOW CLEANUP MESSAGES\n\
===================================================================================\n"],
        }
    }
}
