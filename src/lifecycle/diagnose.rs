//! Why a launcher's `mpirun` failed, read from the tail of its log: SSH, DNS or the key, each with
//! what to check. Only the one matching line is quoted; a key never matches these patterns, so
//! key material cannot reach a condition or an Event through here.

use crate::plan::Plan;

/// What went wrong between the launcher and a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// A host name did not resolve.
    Dns,
    /// sshd turned the job's key down.
    Key,
    /// No SSH session could be opened.
    Ssh,
}

/// Substrings that identify each cause, from OpenSSH, Open MPI (ORTE and PRRTE), Hydra (MPICH and
/// Intel MPI) and glibc. Key problems first: a rejected key also ends the connection.
const PATTERNS: &[(Cause, &str)] = &[
    (Cause::Key, "Permission denied (publickey"),
    (Cause::Key, "are too open"),
    (Cause::Key, "bad permissions"),
    (Cause::Key, "Load key"),
    (Cause::Key, "Too many authentication failures"),
    (Cause::Dns, "Could not resolve hostname"),
    (Cause::Dns, "unable to get host address"),
    (Cause::Dns, "getaddrinfo"),
    (Cause::Dns, "Name or service not known"),
    (Cause::Dns, "Temporary failure in name resolution"),
    (Cause::Dns, "could not be resolved"),
    (Cause::Ssh, "Connection refused"),
    (Cause::Ssh, "kex_exchange_identification"),
    (Cause::Ssh, "Connection closed by"),
    (Cause::Ssh, "Connection reset by"),
    (Cause::Ssh, "Connection timed out"),
    (Cause::Ssh, "No route to host"),
    (Cause::Ssh, "ssh_exchange_identification"),
];

/// Longest quoted log line.
const MAX_QUOTE: usize = 240;

/// The cause named in `log`, with the line that shows it and what to check; `None` when the log
/// shows none of them (the program itself failed).
pub fn launcher_log(log: &str, plan: &Plan) -> Option<String> {
    let (cause, line) = PATTERNS.iter().find_map(|(cause, needle)| {
        log.lines()
            .find(|l| l.contains(needle))
            .map(|l| (*cause, quote(l)))
    })?;
    let advice = match cause {
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
    };
    Some(advice)
}

/// The line without surrounding space and control characters (ANSI colours included), cut to
/// [`MAX_QUOTE`] characters.
fn quote(line: &str) -> String {
    let clean: String = line.trim().chars().filter(|c| !c.is_control()).collect();
    match clean.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{job, plan};

    fn diagnose(log: &str) -> Option<String> {
        let j = job(json!({}));
        launcher_log(log, &plan(&j, "mpi-openmpi"))
    }

    #[test]
    fn names_dns_key_and_ssh_failures_from_each_mpi() {
        let cases = [
            (
                "ssh: Could not resolve hostname pi-node-0-1.pi: Name or service not known",
                "(DNS)",
            ),
            (
                "[proxy:0:0@pi-node-0-0] HYDU_sock_connect (lib/utils/sock.c:110): unable to get host address for pi-launcher-0-0 (1)",
                "(DNS)",
            ),
            (
                "[mpiexec@pi-launcher-0-0] HYD_sock_connect (..): getaddrinfo returned error -2 (Name or service not known)",
                "(DNS)",
            ),
            (
                "mpiuser@pi-node-0-0: Permission denied (publickey).",
                "refused the job's key",
            ),
            (
                "Permissions 0640 for '/root/.ssh/id_rsa' are too open.",
                "refused the job's key",
            ),
            (
                "ssh: connect to host pi-node-0-0.pi port 2222: Connection refused",
                "could not open an SSH session",
            ),
            (
                "kex_exchange_identification: Connection closed by remote host",
                "could not open an SSH session",
            ),
        ];
        for (line, expected) in cases {
            let log =
                format!("rank output\n{line}\nORTE was unable to reliably start one or more daemons.\n");
            let message = diagnose(&log).unwrap_or_default();
            assert!(message.contains(expected), "{line} -> {message}");
            assert!(message.contains(line.trim()), "quotes the line: {message}");
        }
    }

    #[test]
    fn a_rejected_key_wins_over_the_connection_it_closed() {
        let log = "Connection closed by 10.244.0.5 port 2222\nmpiuser@pi-node-0-0: Permission denied (publickey).\n";
        let message = diagnose(log).unwrap_or_default();
        assert!(message.contains("/home/mpiuser/.ssh"), "{message}");
    }

    #[test]
    fn a_program_failure_is_not_blamed_on_ssh_or_dns() {
        assert_eq!(
            diagnose("Traceback (most recent call last):\nValueError: bad input\n"),
            None
        );
        assert_eq!(diagnose(""), None);
    }

    #[test]
    fn long_lines_are_cut() {
        let line = format!(
            "ssh: Could not resolve hostname {}: Name or service not known",
            "x".repeat(1000)
        );
        let message = diagnose(&line).unwrap_or_default();
        assert!(message.len() < 700, "{}", message.len());
        assert!(message.contains('…'));
    }
}
