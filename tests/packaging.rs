//! What ships: the operator's dependency tree (normal and build edges, i.e. what goes into the
//! binary) holds none of the test bed. The bed is the `testbed/` crate, a dev-dependency only.

use std::collections::BTreeSet;
use std::process::Command;

/// Crate names in `cargo tree` of the operator without dev-dependencies.
fn shipped_crates() -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let args = [
        "tree",
        "--locked",
        "--offline",
        "-p",
        "trainjob-operator",
        "--edges",
        "normal,build",
        "--prefix",
        "none",
    ];
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("running cargo {}: {e}", args.join(" ")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo {} failed ({}):\n{stderr}",
        args.join(" "),
        out.status
    );
    // Each line is `<name> v<version> [(path)] [(*)]`.
    let crates: BTreeSet<String> = stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(
        crates.contains("trainjob-operator") && crates.contains("kube"),
        "cargo tree printed no operator tree (stderr:\n{stderr}\nstdout:\n{stdout})"
    );
    crates
}

#[test]
fn the_operator_binary_contains_no_test_bed_code() {
    let crates = shipped_crates();
    // rcgen is not test-only since the operator makes its own webhook CA.
    for test_only in ["trainjob-testbed", "tempfile"] {
        assert!(
            !crates.contains(test_only),
            "{test_only} is in the operator's (non-dev) dependency tree: {crates:?}"
        );
    }
}

/// The objects kustomize renders from `dir` (relative to the repository).
fn kustomize(dir: &str) -> Vec<serde_json::Value> {
    let kubectl = trainjob_testbed::default_bin_dir()
        .expect("bin dir")
        .join("kubectl");
    let out = std::process::Command::new(kubectl)
        .args(["kustomize"])
        .arg(trainjob_testbed::repo_root().join(dir))
        .output()
        .expect("kubectl kustomize");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).expect("yaml")
}

/// `config/certmanager` as kustomize renders it: the operator reads cert-manager's Secret from
/// the directory it is told, cert-manager's CA injector is asked to fill both webhook
/// configurations, and the certificate names the Service the webhooks call. (Serving from
/// files, and reloading them, is tested against the API server in tests/admission.rs.)
#[test]
fn the_cert_manager_overlay_wires_its_certificate_to_the_webhook() {
    let docs = kustomize("config/certmanager");
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let deployment = find("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let dir = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "TRAINJOB_WEBHOOK_CERT_DIR")
        .expect("cert dir env")["value"]
        .clone();
    assert_eq!(container["volumeMounts"][0]["mountPath"], dir);
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        find("Certificate")["spec"]["secretName"]
    );
    for kind in ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] {
        assert_eq!(
            find(kind)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "trainjob-system/trainjob-operator-webhook",
            "{kind}"
        );
    }
    let service = &find("ValidatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["service"];
    let svc = format!(
        "{}.{}.svc",
        service["name"].as_str().unwrap_or_default(),
        service["namespace"].as_str().unwrap_or_default()
    );
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "Service" && d["metadata"]["name"] == service["name"]),
        "the webhooks call a Service the install does not have"
    );
    let names = find("Certificate")["spec"]["dnsNames"]
        .as_array()
        .expect("dnsNames")
        .clone();
    assert!(names.contains(&serde_json::json!(svc)), "{names:?} lacks {svc}");
}

/// FIPS mode refuses a key algorithm FIPS 186-4 does not approve before it touches a cluster,
/// and names the ones it accepts; an approved one passes that check (and then needs a cluster).
#[test]
fn fips_mode_refuses_a_non_fips_key_algorithm_at_start() {
    let run = |algorithm: &str| {
        Command::new(env!("CARGO_BIN_EXE_trainjob-operator"))
            .args([
                "run",
                "--fips",
                "--ssh-key-algorithm",
                algorithm,
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args([
                "--webhook-addr",
                "127.0.0.1:0",
                "--status-server-addr",
                "127.0.0.1:0",
            ])
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("running the operator")
    };
    let refused = run("ed25519");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains(
            "--ssh-key-algorithm ed25519 is not FIPS-approved; use ecdsa-p256, ecdsa-p384, ecdsa-p521 or rsa-3072"
        ),
        "{stderr}"
    );
    let approved = run("ecdsa-p384");
    let stderr = String::from_utf8_lossy(&approved.stderr);
    assert!(!stderr.contains("FIPS"), "{stderr}");
    assert!(
        stderr.contains("connecting to Kubernetes"),
        "it got past the check: {stderr}"
    );
}

/// Leader-election timings under which a leader could still reconcile after another replica
/// took over are refused at start, naming the flag; sound ones pass that check.
#[test]
fn overlapping_leader_election_timings_are_refused_at_start() {
    let run = |deadline: &str| {
        Command::new(env!("CARGO_BIN_EXE_trainjob-operator"))
            .args(["run", "--leader-elect", "--leader-elect-renew-deadline", deadline])
            .args(["--http-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0"])
            .args(["--status-server-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("running the operator")
    };
    let refused = run("20s");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains(
            "--leader-elect-renew-deadline (20s) must be shorter than --leader-elect-lease-duration (15s)"
        ),
        "{stderr}"
    );
    let sound = run("5s");
    let stderr = String::from_utf8_lossy(&sound.stderr);
    assert!(!stderr.contains("leader-elect"), "{stderr}");
    assert!(
        stderr.contains("connecting to Kubernetes"),
        "it got past the check: {stderr}"
    );
}

/// `config/dashboard` as kustomize renders it: its own Deployment running `trainjob-dashboard`, non-root
/// with a read-only root filesystem, under a service account no Role or ClusterRole binds.
#[test]
fn the_dashboard_runs_apart_non_root_and_without_rights() {
    let root = trainjob_testbed::repo_root();
    let docs = kustomize("config/dashboard");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceAccount", "Service", "Deployment"]);
    let pod = &docs[2]["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], docs[0]["metadata"]["name"]);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["command"][0], "/trainjob-dashboard");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    // Nothing anywhere in config/ binds the dashboard's service account.
    let bound = std::process::Command::new("grep")
        .args(["-rl", "trainjob-dashboard"])
        .arg(root.join("config"))
        .output()
        .expect("grep");
    let files = String::from_utf8_lossy(&bound.stdout);
    assert!(files.lines().all(|f| f.contains("config/dashboard/")), "{files}");
}
