//! Talking to the status server as training code does: HTTPS verified with the job's CA, a
//! projected-style service account token from the API server (TokenRequest, bound to a pod), and
//! for the real node, the webhook Service's name resolving to the host where the operator under
//! test serves (`Bed::expose_status_server`).

use std::sync::Arc;

use base64::Engine;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The name the status server's certificate is for (the webhook Service).
pub const SERVER_NAME: &str = "trainjob-operator-webhook.trainjob-system.svc";

/// One answer of the status server.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The `Retry-After` header, when there is one.
    pub retry_after: Option<String>,
    /// The JSON body (`Value::Null` when it is not JSON).
    pub body: Value,
}

impl Reply {
    /// The `message` of a refusal (a `Status` object).
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

/// POSTs `body` to `path` on the status server at `127.0.0.1:port`, trusting only `ca` (PEM)
/// and checking the certificate is for [`SERVER_NAME`]; `token` goes in `Authorization`.
pub async fn post(port: u16, ca: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("a PEM CA")).expect("a CA certificate");
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connecting to the status server");
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("server name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("a TLS handshake verified with the job's CA");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {SERVER_NAME}:{port}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.expect("writing the request");
    tls.write_all(body).await.expect("writing the body");
    let mut response = Vec::new();
    // The server may close as soon as it answered (a body too large is not read to its end).
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let retry_after = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("retry-after: ")
                .or_else(|| l.strip_prefix("Retry-After: "))
        })
        .map(String::from);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Reply {
        status,
        retry_after,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// The CA a job's pods trust the status server by: `ca.crt` of its hostfile ConfigMap, once
/// the operator has written it.
pub async fn job_ca(c: &Client, ns: &str, job: &str) -> String {
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(c.clone(), ns);
    let name = trainjob_operator::names::hostfile_configmap(job);
    super::eventually(
        "the job's CA in its hostfile ConfigMap",
        super::DEADLINE,
        || async {
            let cm = cms.get(&name).await.map_err(|e| e.to_string())?;
            cm.data
                .and_then(|d| d.get(trainjob_operator::desired::reporting::CA_KEY).cloned())
                .filter(|ca| ca.contains("BEGIN CERTIFICATE"))
                .ok_or_else(|| "no ca.crt".to_string())
        },
    )
    .await
}

/// A token of service account `default` in `ns` for `audience`, bound to `pod` when given, as
/// the kubelet requests one for a projected volume.
pub async fn token(c: &Client, ns: &str, pod: Option<&Pod>, audience: &str) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_string()]),
            expiration_seconds: Some(3600),
            bound_object_ref: pod.map(|p| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(p.name_any()),
                uid: p.uid(),
            }),
        }),
        ..Default::default()
    };
    let answer: TokenRequest = Api::<ServiceAccount>::namespaced(c.clone(), ns)
        .create_subresource("token", "default", &PostParams::default(), &request)
        .await
        .expect("a TokenRequest");
    answer.status.and_then(|s| s.token).expect("a token")
}

/// `token` with every claim kept but its lifetime moved into the past, signed again with the
/// bed's service-account key: a token the API server itself issued, now expired.
pub fn expired(token: &str, signing_key_pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let header = parts.next().expect("header");
    let mut claims: Value =
        serde_json::from_slice(&b64.decode(parts.next().expect("claims")).expect("base64")).expect("JSON");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    claims["iat"] = json!(now - 7200);
    claims["nbf"] = json!(now - 7200);
    claims["exp"] = json!(now - 3600);
    let signed = format!("{header}.{}", b64.encode(claims.to_string()));
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(signing_key_pem.as_bytes())
        .expect("a PKCS#8 key");
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_pkcs8_der(),
        &rng,
    )
    .expect("the bed's key is ECDSA P-256");
    let signature = key.sign(&rng, signed.as_bytes()).expect("signing");
    format!("{signed}.{}", b64.encode(signature.as_ref()))
}
