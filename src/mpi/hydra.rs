//! What Intel MPI and MPICH share: both launch with Hydra (`mpiexec.hydra`), read `host:N`
//! hostfile lines, forward the launcher's whole environment by themselves, and start a
//! `hydra_pmi_proxy` on each worker whose first act is to connect back to the launcher by name,
//! at once and without retrying.

use super::Cause;

/// A Hydra hostfile line.
pub fn host_line(host: &str, slots: i32) -> String {
    format!("{host}:{slots}")
}

/// The program Hydra starts on every worker.
pub const REMOTE_DAEMON: &str = "hydra_pmi_proxy";

/// Hydra's own lines: a proxy that cannot resolve the launcher (`HYDU_sock_connect`), and a
/// worker without Hydra's proxy.
pub const PATTERNS: &[(Cause, &str)] = &[
    (Cause::Dns, "unable to get host address"),
    (Cause::Daemon, "hydra_pmi_proxy: command not found"),
    (Cause::Daemon, "hydra_pmi_proxy: No such file or directory"),
];
