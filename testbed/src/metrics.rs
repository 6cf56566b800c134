//! The real node's resource metrics: metrics-server (pinned in `hack/metrics-server`, built by
//! `hack/node.sh build`) runs as a host process next to the node's daemons and serves
//! `metrics.k8s.io` (pod and node CPU and memory, what `kubectl top` and the dashboard read)
//! through the API server's aggregation layer.
//!
//! The API server proxies to it with a front-proxy client certificate ([`front_proxy`]), at the
//! address an EndpointSlice gives: the host's address on the node bridge. metrics-server
//! authenticates as the static-token user [`USER`], with upstream's `system:metrics-server`
//! rights (`hack/metrics-server/bed.yaml`), scrapes only the real node's kubelet (kwok's fake
//! nodes have no kubelet to answer) and dies with the bed; `hack/node.sh cleanup` also stops one
//! that a crashed bed left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::node::{HOST_ADDRESS, REAL_NODE};
use super::process::{Component, Process};
use super::{Bed, BedError, Identity, io, repo_root};

/// The user metrics-server authenticates as (a static token of the bed's API server), bound to
/// upstream's roles by `hack/metrics-server/bed.yaml`.
pub(crate) const USER: &str = "metrics-server";

/// Its static token, a line of the API server's `tokens.csv`.
pub(crate) fn token_line() -> String {
    // uid 100: clear of the identities' 1..=5.
    format!("{USER}-token,{USER},100,\"\"\n")
}

/// The APIService metrics-server backs.
const API_SERVICE: &str = "v1beta1.metrics.k8s.io";

/// The common name of the front-proxy client certificate, the one name metrics-server accepts
/// proxied requests from (`--requestheader-allowed-names`).
const PROXY_CLIENT: &str = "front-proxy-client";

/// The front-proxy CA's file in the bed's `pki` directory.
const FRONT_PROXY_CA: &str = "front-proxy-ca.crt";

/// How often metrics-server scrapes the kubelet: its minimum, so that a pod has usage within
/// two scrapes (CPU is a rate of two samples) of starting.
const RESOLUTION: &str = "10s";

/// Writes the aggregation layer's front-proxy CA and client certificate into `pki` and returns
/// the API server flags that use them: the API server presents the client certificate when it
/// proxies to an aggregated API server, which trusts the user named in its headers only when
/// that certificate is signed by this CA and names [`PROXY_CLIENT`].
pub(crate) fn front_proxy(pki: &Path) -> Result<Vec<String>, BedError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "trainjob-testbed front-proxy CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client.distinguished_name.push(DnType::CommonName, PROXY_CLIENT);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = client.signed_by(&key, &issuer)?;
    let files = [
        (FRONT_PROXY_CA, issuer.pem()),
        ("front-proxy-client.crt", cert.pem()),
        ("front-proxy-client.key", key.serialize_pem()),
    ];
    for (name, content) in &files {
        let path = pki.join(name);
        std::fs::write(&path, content).map_err(|source| io(format!("writing {}", path.display()), source))?;
    }
    let file = |name: &str| pki.join(name).display().to_string();
    Ok(vec![
        format!("--requestheader-client-ca-file={}", file(FRONT_PROXY_CA)),
        format!("--requestheader-allowed-names={PROXY_CLIENT}"),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        format!("--proxy-client-cert-file={}", file("front-proxy-client.crt")),
        format!("--proxy-client-key-file={}", file("front-proxy-client.key")),
    ])
}

/// A started metrics-server, not yet known to be serving.
pub(crate) struct Started {
    /// The process, which the real node stops with its other daemons.
    pub(crate) process: Process,
    log: PathBuf,
}

/// Starts metrics-server from `binary` with its files under the node's directory `dir` (where
/// `hack/node.sh cleanup` looks for it), and registers it: upstream's RBAC, the Service, its
/// EndpointSlice and the APIService. [`wait_available`] then waits until the API server serves
/// `metrics.k8s.io` through it.
pub(crate) async fn start(bed: &Bed, binary: &Path, dir: &Path) -> Result<Started, BedError> {
    let kubeconfig = dir.join("metrics-server.kubeconfig");
    let mut config = bed.kubeconfig(Identity::Admin);
    for named in &mut config.auth_infos {
        named.name = USER.into();
        if let Some(auth) = named.auth_info.as_mut() {
            auth.token = Some(format!("{USER}-token").into());
        }
    }
    for named in &mut config.contexts {
        named.name = USER.into();
        if let Some(context) = named.context.as_mut() {
            context.user = Some(USER.into());
        }
    }
    config.current_context = Some(USER.into());
    let yaml = serde_saphyr::to_string(&config)
        .map_err(|e| BedError::Command(format!("rendering metrics-server's kubeconfig: {e}")))?;
    std::fs::write(&kubeconfig, yaml)
        .map_err(|source| io(format!("writing {}", kubeconfig.display()), source))?;

    let port = super::free_port()?;
    let ca = bed.dir().join("pki").join(FRONT_PROXY_CA);
    let certs = dir.join("metrics-server");
    let log = dir.join("metrics-server.log");
    let kc = kubeconfig.display();
    let process = Process::spawn(
        Component::MetricsServer,
        binary,
        &[
            // First, so that `hack/node.sh cleanup` finds the process by it.
            &format!("--kubeconfig={kc}"),
            // Delegated authentication and authorization (TokenReview, SubjectAccessReview) go
            // to the bed's API server too: there is no in-cluster config.
            &format!("--authentication-kubeconfig={kc}"),
            &format!("--authorization-kubeconfig={kc}"),
            // The front-proxy CA given directly instead of read from the API server's
            // `extension-apiserver-authentication` ConfigMap: that lookup also wants a client CA,
            // which the bed (tokens only) has not, and would log its absence every few seconds.
            // The header names are the API server's (and metrics-server's defaults).
            "--authentication-skip-lookup",
            &format!("--requestheader-client-ca-file={}", ca.display()),
            &format!("--requestheader-allowed-names={PROXY_CLIENT}"),
            // The API server reaches it at the EndpointSlice's address; EndpointSlices refuse
            // loopback addresses.
            &format!("--bind-address={HOST_ADDRESS}"),
            &format!("--secure-port={port}"),
            &format!("--cert-dir={}", certs.display()),
            // Only the real node has a kubelet: kwok's fake nodes advertise an address that
            // nothing on this machine answers.
            &format!("--node-selector={REAL_NODE}=true"),
            // The kubelet serves a certificate it signed itself, at the address it registered.
            "--kubelet-insecure-tls",
            "--kubelet-preferred-address-types=InternalIP",
            "--kubelet-use-node-status-port",
            &format!("--metric-resolution={RESOLUTION}"),
            // Must be shorter than the resolution (its default, 10 s, is not).
            "--kubelet-request-timeout=5s",
        ],
        &log,
    )?;
    let started = Started { process, log };
    let registering = std::time::Instant::now();

    let manifest = repo_root().join("hack/metrics-server/bed.yaml");
    bed.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &manifest.display().to_string(),
    ])?;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "metrics-server-host", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "metrics-server",
                                "endpointslice.kubernetes.io/managed-by": "trainjob-testbed"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [HOST_ADDRESS], "conditions": {"ready": true}}],
        // Named as the Service's port: the aggregator matches them by name.
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    let admin = bed.client(Identity::Admin).await?;
    Api::<EndpointSlice>::namespaced(admin, "kube-system")
        .patch(
            "metrics-server-host",
            &PatchParams::apply("trainjob-testbed").force(),
            &Patch::Apply(&slice),
        )
        .await
        .map_err(|source| BedError::Kube {
            what: "creating metrics-server's EndpointSlice".into(),
            source,
        })?;
    tracing::info!(
        registered_ms = registering.elapsed().as_millis() as u64,
        "metrics-server started and registered"
    );
    Ok(started)
}

/// Waits until the APIService is `Available` (the API server reached metrics-server's
/// discovery), so that nothing that discovers the cluster's APIs (kubectl, the namespace
/// controller) sees a failing group; fails early with its log when metrics-server exits.
pub(crate) async fn wait_available(bed: &Bed, started: &Started, timeout: Duration) -> Result<(), BedError> {
    let gvk = GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService");
    let api: Api<DynamicObject> =
        Api::all_with(bed.client(Identity::Admin).await?, &ApiResource::from_gvk(&gvk));
    let waiting = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = started.process.exited() {
            return Err(BedError::Exited {
                component: Component::MetricsServer,
                status,
                tail: started.process.tail(30),
            });
        }
        let last = match api.get_opt(API_SERVICE).await {
            Ok(Some(service)) => {
                let available = service.data["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Available"));
                if available.is_some_and(|c| c["status"] == "True") {
                    // What it adds to a real bed's start: the wait past the node's own.
                    tracing::info!(
                        waited_ms = waiting.elapsed().as_millis() as u64,
                        "metrics.k8s.io served by metrics-server"
                    );
                    return Ok(());
                }
                available.map_or_else(|| "no Available condition".into(), |c| c.to_string())
            }
            Ok(None) => format!("no APIService {API_SERVICE}"),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(BedError::Timeout {
                what: format!("APIService {API_SERVICE} to become Available (last: {last})"),
                seconds: timeout.as_secs(),
                logs: format!(
                    "--- metrics-server ({}) ---\n{}",
                    started.log.display(),
                    started.process.tail(30)
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
