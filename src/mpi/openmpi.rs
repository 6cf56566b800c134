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
    "OMPI_MCA_oob_tcp_keepalive_time",
    "OMPI_MCA_oob_tcp_keepalive_intvl",
    "OMPI_MCA_oob_tcp_keepalive_probes",
    "PRTE_MCA_oob_tcp_keepalive_time",
    "PRTE_MCA_oob_tcp_keepalive_intvl",
    "PRTE_MCA_oob_tcp_keepalive_probes",
];

/// TCP keepalives on the runtime's own connections between mpirun and each worker's daemon
/// (seconds idle, seconds between probes, probes): a worker cut off by a partition is declared
/// lost ("has lost communication with a remote daemon") about 70 s after the link went quiet.
/// Without them (upstream's 300 s, 20 s, 9) mpirun was seen on three real nodes to wait on after
/// ssh's keepalives ended its session to the worker. Later than Kubernetes calls a dead node
/// lost (50 s), as ssh's.
const OOB_KEEPALIVE: [&str; 3] = ["30", "10", "4"];

/// Open MPI refuses to start as root without both (ORTE and PRRTE alike).
const ROOT: &[(&str, &str)] = &[
    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
];

/// Open MPI's own lines. A broken connection: ORTE's and PRRTE's `node-died` help text
/// (help-errmgr-base.txt: "ORTE has lost communication with a remote daemon." or "PRTE ...",
/// then "  Remote daemon: NAME on node HOST", listed first so that the line quoted names the
/// worker) and `no-path` ("ORTE does not know how to route a message to the specified daemon",
/// then "  target node:  HOST", also first: what a partition between the launcher's node and the
/// workers' gives, seen on three real nodes),
/// and a TCP link that timed out or lost its route (the btl's and oob's "readv failed: %s (%d)",
/// as in "mca_btl_tcp_frag_recv: readv failed: Connection timed out (110)"). Not "Connection reset
/// by peer (104)" nor "peer hung up": a rank that crashed resets its links too. The daemon ORTE or
/// PRRTE starts on each worker could not run there: the worker's image lacks the launcher's Open
/// MPI (or its `PATH` in a non-interactive ssh session does).
const PATTERNS: &[(Cause, &str)] = &[
    (Cause::Connection, "Remote daemon:"),
    (Cause::Connection, "target node:"),
    (Cause::Connection, "has lost communication with a remote daemon"),
    (Cause::Connection, "does not know how to route a message"),
    (Cause::Connection, "Connection timed out (110)"),
    (Cause::Connection, "No route to host (113)"),
    (Cause::Daemon, "orted: command not found"),
    (Cause::Daemon, "prted: command not found"),
    (
        Cause::Daemon,
        "ORTE was unable to reliably start one or more daemons",
    ),
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
            ("OMPI_MCA_oob_tcp_keepalive_time", OOB_KEEPALIVE[0].into()),
            ("OMPI_MCA_oob_tcp_keepalive_intvl", OOB_KEEPALIVE[1].into()),
            ("OMPI_MCA_oob_tcp_keepalive_probes", OOB_KEEPALIVE[2].into()),
            // Open MPI 5 (PRRTE). The hostfile names are `<pod>.<subdomain>`, not FQDNs; PRRTE
            // must shorten them to match the hostnames its daemons report (kubeflow/trainer#4028).
            ("PRTE_MCA_prte_default_hostfile", HOSTFILE_PATH.into()),
            ("PRTE_MCA_prte_keep_fqdn_hostnames", "false".into()),
            ("PRTE_MCA_prte_set_default_slots", slots),
            ("PRTE_MCA_plm_ssh_args", SSH_ARGS.into()),
            ("PRTE_MCA_oob_tcp_keepalive_time", OOB_KEEPALIVE[0].into()),
            ("PRTE_MCA_oob_tcp_keepalive_intvl", OOB_KEEPALIVE[1].into()),
            ("PRTE_MCA_oob_tcp_keepalive_probes", OOB_KEEPALIVE[2].into()),
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
                    Cause::Connection,
                ),
                (
                    "mpiuser@pi-node-0-0: Permission denied (publickey).\nORTE was unable to reliably start one or more daemons.",
                    Cause::Key,
                ),
                // Open MPI 4, a worker partitioned away: ssh's keepalives end its session, and
                // ORTE reports the daemon as one it could not start.
                (ORTE_PARTITION, Cause::Connection),
                // Open MPI 4, the daemon's own link to mpirun broke.
                (ORTE_NODE_DIED, Cause::Connection),
                (
                    "--------------------------------------------------------------------------\n\
ORTE does not know how to route a message to the specified daemon\n\
located on the indicated node:\n\n  my node:   pi-launcher-0-0\n  target node:  pi-node-0-1.pi\n",
                    Cause::Connection,
                ),
                // Open MPI 4's TCP btl: a rank's link to another timed out.
                (
                    "[pi-node-0-0][[41386,1],0][btl_tcp_frag.c:241:mca_btl_tcp_frag_recv] mca_btl_tcp_frag_recv: readv failed: Connection timed out (110)\n\
--------------------------------------------------------------------------\n\
Primary job  terminated normally, but 1 process returned\n\
a non-zero exit code. Per user-direction, the job has been aborted.\n",
                    Cause::Connection,
                ),
                // Open MPI 5: the same, and PRRTE's word for a daemon whose session ended.
                (PRRTE_PARTITION, Cause::Connection),
                (PRRTE_NODE_DIED, Cause::Connection),
                (
                    "[pi-node-0-0][[prterun-pi-launcher-0-0-1@1,0]][btl_tcp_frag.c:238:mca_btl_tcp_frag_recv] peer: pi-node-0-1 mca_btl_tcp_frag_recv: readv failed: No route to host (113)",
                    Cause::Connection,
                ),
            ],
            program_failures: &[RANK_CRASHED],
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

/// Open MPI 4's tail when ssh's keepalives end the session to a partitioned worker.
#[cfg(test)]
const ORTE_PARTITION: &str = "\
Timeout, server pi-node-0-1.pi not responding.
--------------------------------------------------------------------------
ORTE was unable to reliably start one or more daemons.
This usually is caused by:

* not finding the required libraries and/or binaries on
  one or more nodes. Please check your PATH and LD_LIBRARY_PATH
  settings, or configure OMPI with --enable-orterun-prefix-by-default
--------------------------------------------------------------------------
";

/// Open MPI 4's tail when a daemon's own link to mpirun broke.
#[cfg(test)]
pub(crate) const ORTE_NODE_DIED: &str = "\
--------------------------------------------------------------------------
ORTE has lost communication with a remote daemon.

  HNP daemon   : [[41386,0],0] on node pi-launcher-0-0
  Remote daemon: [[41386,0],1] on node pi-node-0-1.pi

This is usually due to either a failure of the TCP network
connection to the node, or possibly an internal failure of
the daemon itself. We cannot recover from this failure, and
therefore will terminate the job.
--------------------------------------------------------------------------
";

/// Open MPI 5's tail when ssh's keepalives end the session to a partitioned worker.
#[cfg(test)]
const PRRTE_PARTITION: &str = "\
Timeout, server pi-node-0-1.pi not responding.
------------------------------------------------------------
A daemon failed to report back after being spawned. This could
be due to several factors, including inability to find the
daemon executable, or the executable was unable to find its
required supporting libraries. In some cases, the daemon was
able to execute, but was unable to complete a TCP connection
back to prterun:

  Local host:    pi-launcher-0-0
  Remote host:   pi-node-0-1
  Daemon exit status: 255

This may also be caused by a firewall on the remote host. Please
check that any firewall (e.g., iptables) has been disabled and
try again.
------------------------------------------------------------
";

/// Open MPI 5's tail when a daemon's own link to prterun broke.
#[cfg(test)]
const PRRTE_NODE_DIED: &str = "\
--------------------------------------------------------------------------
PRTE has lost communication with a remote daemon.

  HNP daemon   : [prterun-pi-launcher-0-0-1@0] on node pi-launcher-0-0
  Remote daemon: [prterun-pi-launcher-0-0-1@1] on node pi-node-0-1

This is usually due to either a failure of the TCP network
connection to the node, or possibly an internal failure of
the daemon itself. We cannot recover from this failure, and
therefore will terminate the job.
--------------------------------------------------------------------------
";

/// A rank that crashed: its peers see their links to it reset, which is not the network's doing.
#[cfg(test)]
const RANK_CRASHED: &str = "\
--------------------------------------------------------------------------
An MPI communication peer process has unexpectedly disconnected.  This
usually indicates a failure in the peer process (e.g., a crash or
otherwise exiting without calling MPI_FINALIZE first).

  Local host: pi-node-0-0
  Local PID:  61
  Peer host:  pi-node-0-1
--------------------------------------------------------------------------
--------------------------------------------------------------------------
Primary job  terminated normally, but 1 process returned
a non-zero exit code. Per user-direction, the job has been aborted.
--------------------------------------------------------------------------
--------------------------------------------------------------------------
mpirun noticed that process rank 1 with PID 0 on node pi-node-0-1 exited on signal 11 (Segmentation fault).
--------------------------------------------------------------------------
";
