//! What Intel MPI and MPICH share: both launch with Hydra (`mpiexec.hydra`), read `host:N`
//! hostfile lines, forward the launcher's whole environment by themselves, and start a
//! `hydra_pmi_proxy` on each worker whose first act is to connect back to the launcher by name,
//! at once and without retrying. An implementation says what is its own ([`Hydra`]); the rest of
//! [`Implementation`] comes from here.

use super::{Cause, Implementation};
use crate::api::MPIImplementation;

/// What a Hydra-based implementation says itself; see [`Implementation`] for each item.
pub trait Hydra: Sync {
    /// See [`Implementation::api`].
    fn api(&self) -> MPIImplementation;
    /// See [`Implementation::name`].
    fn name(&self) -> &'static str;
    /// See [`Implementation::variables`].
    fn variables(&self, slots: i32) -> Vec<(&'static str, String)>;
    /// See [`Implementation::reserved`].
    fn reserved(&self) -> &'static [&'static str];
    /// See [`Implementation::cases`].
    #[cfg(test)]
    fn cases(&self) -> super::tests::Cases;
}

/// Hydra's own lines: a proxy that cannot resolve the launcher (`HYDU_sock_connect`), a control
/// or I/O socket between mpiexec and a proxy that timed out or lost its route (`HYDU_sock_read`
/// and `HYDU_sock_write`: "read error (Connection timed out)"; a reset reads as a closed socket,
/// which a crashed proxy causes too), mpiexec giving up on a proxy's control socket
/// (`control_cb`: "unable to read command from proxy"), a rank whose UCX link to another timed out
/// (MPICH's UCX netmod quotes UCX's status, "Endpoint timeout"), and a worker without Hydra's
/// proxy.
const PATTERNS: &[(Cause, &str)] = &[
    (Cause::Dns, "unable to get host address"),
    (Cause::Connection, "error (Connection timed out)"),
    (Cause::Connection, "error (No route to host)"),
    (Cause::Connection, "unable to read command from proxy"),
    (Cause::Connection, "Endpoint timeout"),
    (Cause::Daemon, "hydra_pmi_proxy: command not found"),
    (Cause::Daemon, "hydra_pmi_proxy: No such file or directory"),
];

impl<T: Hydra> Implementation for T {
    fn api(&self) -> MPIImplementation {
        Hydra::api(self)
    }

    fn name(&self) -> &'static str {
        Hydra::name(self)
    }

    fn host_line(&self, host: &str, slots: i32) -> String {
        format!("{host}:{slots}")
    }

    fn variables(&self, slots: i32) -> Vec<(&'static str, String)> {
        Hydra::variables(self, slots)
    }

    fn reserved(&self) -> &'static [&'static str] {
        Hydra::reserved(self)
    }

    fn calls_back_by_name(&self) -> bool {
        true
    }

    fn remote_daemon(&self) -> &'static str {
        "hydra_pmi_proxy"
    }

    fn log_patterns(&self) -> &'static [(Cause, &'static str)] {
        PATTERNS
    }

    #[cfg(test)]
    fn cases(&self) -> super::tests::Cases {
        Hydra::cases(self)
    }
}
