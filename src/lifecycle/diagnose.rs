//! Why a launcher's `mpirun` failed, read from the tail of its log (the implementation's lines,
//! `mpi::diagnose`), and what to check, in the job's own terms: its Service, key mount, images
//! and the network between its nodes.

use crate::mpi::{self, Cause};
use crate::plan::Plan;

/// What went wrong and what to check, with the log line that shows it; `None` when the log
/// names no cause (the program itself failed).
pub fn launcher_log(log: &str, plan: &Plan) -> Option<String> {
    let mpi = plan.mpi();
    let mpi::Finding { cause, line } = mpi::diagnose(mpi, log)?;
    Some(match cause {
        Cause::Dns => format!(
            "a host name did not resolve (DNS): {line:?}; check that the headless Service {} exists with publishNotReadyAddresses, that the pods' dnsPolicy and dnsConfig reach cluster DNS, and that the operator's --cluster-domain matches the cluster's",
            plan.subdomain
        ),
        Cause::Key => format!(
            "SSH refused the job's key: {line:?}; check that the workers' sshd reads authorized_keys from {} (spec.mlPolicy.mpi.sshAuthMountPath), that the image's user is the pod's user, and that sshd accepts the key files' owner and mode (StrictModes no for a non-root sshd)",
            plan.ssh_mount_path
        ),
        Cause::Ssh => format!(
            "mpirun could not open an SSH session to a worker: {line:?}; check that the workers run sshd on the port the image's ssh_config names and that their readiness probe checks that port"
        ),
        Cause::Connection => format!(
            "{} broke while the job ran: {line:?}; check the network between the job's nodes (a partition, a node that went away or restarted, a NetworkPolicy or firewall that changed): mpirun's SSH sessions to the workers and the ranks' own connections must stay open for the whole run",
            match mpi::peer(&line) {
                Some(host) => format!("the connection to {host}"),
                None => "a connection between the launcher and a worker, or between ranks,".into(),
            }
        ),
        Cause::Daemon => format!(
            "{} could not start its {} on a worker: {line:?}; check that the workers' image has the launcher's MPI installed, on the PATH of a non-interactive ssh session",
            mpi.name(),
            mpi.remote_daemon()
        ),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{job, plan};

    fn diagnose(runtime: &str, log: &str) -> Option<String> {
        let j = job(json!({"runtimeRef": {"name": runtime}}));
        launcher_log(log, &plan(&j, runtime))
    }

    /// What Open MPI 4 printed when the launcher's node was cut off from the workers' on three
    /// real nodes (tests/multinode.rs): the help text's host line names the worker.
    #[test]
    fn a_route_lost_to_a_worker_names_it() {
        let log = "ORTE does not know how to route a message to the specified daemon\nlocated on the indicated node:\n\n  my node:   pi-launcher-0-0\n  target node:  pi-node-0-1.pi\n";
        let message = diagnose("mpi-openmpi", log).unwrap_or_default();
        assert!(
            message.starts_with(
                "the connection to pi-node-0-1.pi broke while the job ran: \"target node:  pi-node-0-1.pi\""
            ),
            "{message}"
        );
    }

    /// What MPICH printed in the same partition: ssh's keepalives gave up, then Hydra.
    #[test]
    fn a_session_that_timed_out_names_its_address() {
        let log = "Connection to 10.244.2.3 port 2222 timed out\n[mpiexec@pi-launcher-0-0] ui_cmd_cb (/mpich-5.0.2/src/pm/hydra/mpiexec/pmiserv_pmci.c:51): Launch proxy failed.\n";
        let message = diagnose("mpi-mpich", log).unwrap_or_default();
        assert!(
            message.starts_with("the connection to 10.244.2.3 broke while the job ran"),
            "{message}"
        );
    }

    #[test]
    fn each_cause_says_what_to_check_and_quotes_the_line() {
        let cases = [
            (
                "mpi-openmpi",
                "ssh: Could not resolve hostname pi-node-0-1.pi: Name or service not known",
                "(DNS)",
            ),
            (
                "mpi-mpich",
                "[proxy:0:0@pi-node-0-0] HYDU_sock_connect (lib/utils/sock.c:110): unable to get host address for pi-launcher-0-0 (1)",
                "(DNS)",
            ),
            (
                "mpi-intel",
                "[mpiexec@pi-launcher-0-0] HYD_sock_connect (..): getaddrinfo returned error -2 (Name or service not known)",
                "(DNS)",
            ),
            (
                "mpi-openmpi",
                "mpiuser@pi-node-0-0: Permission denied (publickey).",
                "refused the job's key",
            ),
            (
                "mpi-openmpi",
                "Permissions 0640 for '/root/.ssh/id_rsa' are too open.",
                "refused the job's key",
            ),
            (
                "mpi-intel",
                "ssh: connect to host pi-node-0-0.pi port 2222: Connection refused",
                "could not open an SSH session",
            ),
            (
                "mpi-openmpi",
                "kex_exchange_identification: Connection closed by remote host",
                "could not open an SSH session",
            ),
            (
                "mpi-openmpi",
                "bash: line 1: orted: command not found",
                "Open MPI could not start its orted (Open MPI 4) or prted (Open MPI 5) on a worker",
            ),
            (
                "mpi-mpich",
                "bash: line 1: hydra_pmi_proxy: command not found",
                "MPICH could not start its hydra_pmi_proxy on a worker",
            ),
            (
                "mpi-openmpi",
                "Timeout, server pi-node-0-1.pi not responding.",
                "the connection to pi-node-0-1.pi broke while the job ran",
            ),
            (
                "mpi-openmpi",
                "  Remote daemon: [[41386,0],1] on node pi-node-0-1.pi",
                "the connection to pi-node-0-1.pi broke while the job ran",
            ),
            (
                "mpi-intel",
                "Connection to pi-node-0-1.pi closed by remote host.",
                "the connection to pi-node-0-1.pi broke while the job ran",
            ),
            (
                "mpi-mpich",
                "[mpiexec@pi-launcher-0-0] control_cb (mpiexec/pmiserv_cb.c:279): unable to read command from proxy",
                "a connection between the launcher and a worker, or between ranks, broke while the job ran",
            ),
        ];
        for (runtime, line, expected) in cases {
            let log =
                format!("rank output\n{line}\nORTE was unable to reliably start one or more daemons.\n");
            let message = diagnose(runtime, &log).unwrap_or_default();
            assert!(message.contains(expected), "{line} -> {message}");
            assert!(message.contains(line.trim()), "quotes the line: {message}");
        }
    }

    #[test]
    fn the_advice_names_the_jobs_own_mount_path() {
        let log = "Connection closed by 10.244.0.5 port 2222\nmpiuser@pi-node-0-0: Permission denied (publickey).\n";
        let message = diagnose("mpi-openmpi", log).unwrap_or_default();
        assert!(message.contains("/home/mpiuser/.ssh"), "{message}");
    }

    #[test]
    fn a_lost_daemon_is_named_by_its_node_and_blamed_on_the_network() {
        let message = diagnose("mpi-openmpi", crate::mpi::ORTE_NODE_DIED).unwrap_or_default();
        assert!(
            message.starts_with("the connection to pi-node-0-1.pi broke while the job ran"),
            "{message}"
        );
        assert!(message.contains("a partition"), "{message}");
        assert!(
            !message.contains("pi-launcher-0-0"),
            "names the worker, not mpirun's node: {message}"
        );
    }

    #[test]
    fn a_program_failure_is_not_blamed_on_ssh_or_dns() {
        assert_eq!(
            diagnose(
                "mpi-openmpi",
                "Traceback (most recent call last):\nValueError: bad input\n"
            ),
            None
        );
    }
}
