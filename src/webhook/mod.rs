//! The admission webhook, served over TLS next to the controller: defaulting for TrainJobs
//! (`runtimePatches[].time`), validation for TrainJobs and both runtime kinds, and an audit line
//! for every admitted TrainJob create, update and delete. The rules are pure (`rules`); this
//! module decodes requests, fetches what the rules need and encodes the answer.

pub mod certs;
pub mod rules;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use kube::Client;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::de::DeserializeOwned;

use crate::api::{ClusterTrainingRuntime, TrainJob, TrainingRuntime};
use crate::metrics::{AdmissionLabels, Metrics};
use crate::runtimes::{self, LookupError};
use crate::validate::Limits;
use certs::{Bundle, CertError, Source};

/// Paths, as upstream Trainer serves them (so its manifests' paths work unchanged).
pub const MUTATE_TRAINJOB: &str = "/mutate-trainer-kubeflow-org-v1alpha1-trainjob";
/// See [`MUTATE_TRAINJOB`].
pub const VALIDATE_TRAINJOB: &str = "/validate-trainer-kubeflow-org-v1alpha1-trainjob";
/// See [`MUTATE_TRAINJOB`].
pub const VALIDATE_TRAININGRUNTIME: &str = "/validate-trainer-kubeflow-org-v1alpha1-trainingruntime";
/// See [`MUTATE_TRAINJOB`].
pub const VALIDATE_CLUSTERTRAININGRUNTIME: &str =
    "/validate-trainer-kubeflow-org-v1alpha1-clustertrainingruntime";

/// Webhook settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Address to serve HTTPS on.
    pub addr: SocketAddr,
    /// Where the serving certificate comes from.
    pub certs: Source,
    /// Limits on a single job, as the controller applies them.
    pub limits: Limits,
    /// Offer only FIPS-approved TLS cipher suites and key exchanges.
    pub fips: bool,
    /// The status server (`progress`), served with the same certificate; `None`: off.
    pub progress: Option<crate::progress::Serving>,
}

/// What the handlers share.
#[derive(Clone)]
struct Webhook {
    client: Client,
    limits: Limits,
    metrics: Arc<Metrics>,
    runtimes: runtimes::Cache,
}

/// The router, separate from serving so tests can call it without TLS.
pub fn router(client: Client, limits: Limits, metrics: Arc<Metrics>, runtimes: runtimes::Cache) -> Router {
    Router::new()
        .route(MUTATE_TRAINJOB, post(mutate_trainjob))
        .route(VALIDATE_TRAINJOB, post(validate_trainjob))
        .route(VALIDATE_TRAININGRUNTIME, post(validate_runtime))
        .route(VALIDATE_CLUSTERTRAININGRUNTIME, post(validate_runtime))
        .with_state(Webhook {
            client,
            limits,
            metrics,
            runtimes,
        })
}

/// An AdmissionReview body as the request it carries; the error says what was wrong with it.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|_| "the AdmissionReview carries no request".to_string())
}

/// The request's object (or old object) as `K`.
pub fn typed<K: DeserializeOwned>(object: Option<&DynamicObject>) -> Result<Option<K>, String> {
    object
        .map(|o| {
            serde_json::to_value(o)
                .and_then(serde_json::from_value)
                .map_err(|e| format!("the object does not match its schema: {e}"))
        })
        .transpose()
}

fn respond(response: AdmissionResponse) -> impl IntoResponse {
    let body = serde_json::to_vec(&response.into_review()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Counts the answer and turns it into a response.
fn answer(w: &Webhook, req: &AdmissionRequest<DynamicObject>, verdict: rules::Verdict) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(req);
    let allowed = verdict.is_ok();
    w.metrics
        .admission_reviews
        .get_or_create(&AdmissionLabels {
            kind: req.kind.kind.clone(),
            operation: operation(&req.operation).into(),
            allowed: allowed.to_string(),
        })
        .inc();
    match verdict {
        Ok(warnings) => {
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            response
        }
        Err(message) => response.deny(message),
    }
}

fn operation(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

async fn mutate_trainjob(body: Bytes) -> impl IntoResponse {
    let req = match decode(&body) {
        Ok(req) => req,
        Err(e) => return respond(AdmissionResponse::invalid(e)),
    };
    let response = AdmissionResponse::from(&req);
    let jobs = typed::<TrainJob>(req.object.as_ref())
        .and_then(|j| Ok((j, typed::<TrainJob>(req.old_object.as_ref())?)));
    let ops = match jobs {
        Ok((Some(job), old)) => rules::stamp_patch_times(&job, old.as_ref(), &crate::lifecycle::now()),
        Ok((None, _)) => Vec::new(),
        // The validating webhook refuses it with the reason; defaulting has nothing to add.
        Err(_) => Vec::new(),
    };
    if ops.is_empty() {
        return respond(response);
    }
    let patched = serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops))
        .map_err(|e| e.to_string())
        .and_then(|p| response.clone().with_patch(p).map_err(|e| e.to_string()));
    match patched {
        Ok(r) => respond(r),
        Err(e) => respond(response.deny(format!("defaulting failed: {e}"))),
    }
}

async fn validate_trainjob(State(w): State<Webhook>, body: Bytes) -> impl IntoResponse {
    let req = match decode(&body) {
        Ok(req) => req,
        Err(e) => return respond(AdmissionResponse::invalid(e)),
    };
    let verdict = match req.operation {
        Operation::Create | Operation::Update => check_trainjob(&w, &req).await,
        Operation::Delete | Operation::Connect => Ok(Vec::new()),
    };
    if verdict.is_ok() {
        audit(&req);
    }
    respond(answer(&w, &req, verdict))
}

async fn check_trainjob(w: &Webhook, req: &AdmissionRequest<DynamicObject>) -> rules::Verdict {
    let job = typed::<TrainJob>(req.object.as_ref())?.ok_or("the request has no TrainJob")?;
    let old = typed::<TrainJob>(req.old_object.as_ref())?;
    let namespace = req.namespace.as_deref().unwrap_or_default();
    let runtime = if rules::needs_runtime(&job, old.as_ref()) {
        match runtimes::fetch(&w.client, Some(&w.runtimes), &job, namespace).await {
            Ok(rt) => Some(rt),
            // An existing job runs on its frozen copy; a runtime deleted since changes nothing.
            Err(LookupError::NotFound { .. }) if old.is_some() => None,
            Err(e) => return Err(format!("spec.runtimeRef: {e}")),
        }
    } else {
        None
    };
    rules::trainjob(&job, old.as_ref(), runtime.as_ref(), &w.limits)
}

async fn validate_runtime(State(w): State<Webhook>, body: Bytes) -> impl IntoResponse {
    let req = match decode(&body) {
        Ok(req) => req,
        Err(e) => return respond(AdmissionResponse::invalid(e)),
    };
    let verdict = match req.operation {
        Operation::Create | Operation::Update => check_runtime(&w, &req),
        Operation::Delete | Operation::Connect => Ok(Vec::new()),
    };
    respond(answer(&w, &req, verdict))
}

fn check_runtime(w: &Webhook, req: &AdmissionRequest<DynamicObject>) -> rules::Verdict {
    let object = req.object.as_ref();
    let (label, spec, labels) = if req.kind.kind == "ClusterTrainingRuntime" {
        let rt =
            typed::<ClusterTrainingRuntime>(object)?.ok_or("the request has no ClusterTrainingRuntime")?;
        (
            format!("ClusterTrainingRuntime/{}", req.name),
            rt.spec.0,
            rt.metadata.labels,
        )
    } else {
        let rt = typed::<TrainingRuntime>(object)?.ok_or("the request has no TrainingRuntime")?;
        (
            format!("TrainingRuntime/{}", req.name),
            rt.spec,
            rt.metadata.labels,
        )
    };
    rules::runtime(&label, &spec, &labels.unwrap_or_default(), &w.limits)
}

/// One structured line per admitted TrainJob change: who, what, where. Never the spec (it may
/// name Secrets or carry env values).
fn audit(req: &AdmissionRequest<DynamicObject>) {
    let user = &req.user_info;
    tracing::info!(
        target: "trainjob_operator::audit",
        operation = operation(&req.operation),
        user = user.username.as_deref().unwrap_or_default(),
        groups = user.groups.as_deref().unwrap_or_default().join(","),
        namespace = req.namespace.as_deref().unwrap_or_default(),
        name = %req.name,
        dry_run = req.dry_run,
        "TrainJob admitted"
    );
}

/// The TLS settings for `bundle`: ring, TLS 1.2 and 1.3; in FIPS mode only AES-GCM suites and
/// NIST curves.
pub fn tls_config(bundle: &Bundle, fips: bool) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(bundle.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the serving certificate is not PEM: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(bundle.key.as_bytes())
        .map_err(|_| "the serving key is not a PEM private key".to_string())?;
    let mut provider = rustls::crypto::ring::default_provider();
    if fips {
        use rustls::{CipherSuite as S, NamedGroup};
        provider.cipher_suites.retain(|s| {
            matches!(
                s.suite(),
                S::TLS13_AES_128_GCM_SHA256
                    | S::TLS13_AES_256_GCM_SHA384
                    | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                    | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                    | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            )
        });
        provider
            .kx_groups
            .retain(|g| matches!(g.name(), NamedGroup::secp256r1 | NamedGroup::secp384r1));
    }
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the serving certificate and key do not match: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// How often the certificate source is checked: often enough to renew in time.
fn check_interval(certs: &Source) -> Duration {
    match certs {
        Source::SelfManaged(s) => (s.validity / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        Source::Files(_) => Duration::from_secs(10),
    }
}

/// The current bundle, made, renewed and published as the source requires.
async fn current(client: &Client, source: &Source) -> Result<Bundle, CertError> {
    match source {
        Source::SelfManaged(cfg) => {
            let bundle = certs::ensure(client, cfg).await?;
            let missing = certs::publish(client, &cfg.configuration, &bundle.ca).await?;
            if !missing.is_empty() {
                tracing::warn!(configuration = %cfg.configuration, ?missing, "webhook configurations not found: admission checks are off until the install creates them");
            }
            Ok(bundle)
        }
        Source::Files(dir) => certs::read_files(dir),
    }
}

/// Serves the webhook (and the status server, when on) until `shutdown` resolves: waits for a
/// certificate (retrying), then serves it and sets `ready`, and swaps in renewed certificates
/// without dropping connections. Every certificate's CA goes to the status server's `trust`.
pub async fn serve(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    runtimes: runtimes::Cache,
    ready: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let interval = check_interval(&settings.certs);
    let mut shutdown = std::pin::pin!(shutdown);
    let first = loop {
        match current(&client, &settings.certs)
            .await
            .map_err(|e| e.to_string())
            .and_then(|b| {
                let config = tls_config(&b, settings.fips)?;
                Ok((b, config))
            }) {
            Ok(found) => break found,
            Err(e) => tracing::warn!(error = %e, retry_in = ?interval, "no webhook certificate yet"),
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(interval.min(Duration::from_secs(5))) => {}
        }
    };
    let (mut bundle, config) = first;
    let trust = settings.progress.as_ref().map(|p| p.trust.clone());
    let publish = |bundle: &Bundle| {
        if let Some(trust) = &trust {
            trust.send_replace(Some(bundle.ca.clone()));
        }
    };
    publish(&bundle);
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
    let handle = axum_server::Handle::new();
    let progress_handle = axum_server::Handle::new();
    let progress = match &settings.progress {
        Some(p) => {
            if bundle.ca.is_empty() {
                tracing::warn!(
                    "the certificate directory holds no ca.crt: pods cannot verify the status server, so jobs get no progress reporting"
                );
            }
            let serve = axum_server::bind_rustls(p.addr, tls.clone())
                .handle(progress_handle.clone())
                .serve(crate::progress::router(client.clone(), metrics.clone()).into_make_service());
            tracing::info!(addr = %p.addr, "serving the status server for training progress");
            futures::future::Either::Left(serve)
        }
        None => futures::future::Either::Right(std::future::pending()),
    };
    let server = axum_server::bind_rustls(settings.addr, tls.clone())
        .handle(handle.clone())
        .serve(router(client.clone(), settings.limits, metrics, runtimes).into_make_service());
    // Either server ending ends both: the process restarts and the failure is seen.
    let server = async move {
        tokio::select! {
            result = server => result,
            result = progress => result,
        }
    };
    let mut server = std::pin::pin!(server);
    // Ready once the socket listens, with the CA published.
    tokio::select! {
        bound = handle.listening() => {
            if bound.is_some() {
                tracing::info!(addr = %settings.addr, "serving the admission webhook");
                ready.store(true, Ordering::Relaxed);
            }
        }
        result = &mut server => return result,
    }
    loop {
        tokio::select! {
            result = &mut server => return result,
            _ = &mut shutdown => {
                handle.graceful_shutdown(Some(Duration::from_secs(5)));
                progress_handle.graceful_shutdown(Some(Duration::from_secs(5)));
                return server.await;
            }
            _ = tokio::time::sleep(interval) => {}
        }
        match current(&client, &settings.certs).await {
            Ok(next) if next != bundle => match tls_config(&next, settings.fips) {
                Ok(config) => {
                    tls.reload_from_config(Arc::new(config));
                    publish(&next);
                    tracing::info!("serving a renewed webhook certificate");
                    bundle = next;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the renewed webhook certificate is unusable; keeping the current one")
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "checking the webhook certificate failed; keeping the current one")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> Bundle {
        certs::generate(&["127.0.0.1".to_string()], Duration::from_secs(3600), None)
            .expect("generate")
            .0
    }

    #[test]
    fn fips_mode_offers_only_aes_gcm_suites_and_nist_curves() {
        let suites = |c: &rustls::ServerConfig| -> Vec<String> {
            c.crypto_provider()
                .cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect()
        };
        let groups = |c: &rustls::ServerConfig| -> Vec<String> {
            c.crypto_provider()
                .kx_groups
                .iter()
                .map(|g| format!("{:?}", g.name()))
                .collect()
        };
        let default = tls_config(&bundle(), false).expect("default");
        assert!(
            suites(&default).iter().any(|s| s.contains("CHACHA20")),
            "{:?}",
            suites(&default)
        );
        assert!(groups(&default).contains(&"X25519".to_string()));
        let fips = tls_config(&bundle(), true).expect("fips");
        assert!(!suites(&fips).is_empty());
        assert!(
            suites(&fips)
                .iter()
                .all(|s| s.contains("AES") && s.contains("GCM")),
            "{:?}",
            suites(&fips)
        );
        assert_eq!(groups(&fips), ["secp256r1", "secp384r1"]);
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused_in_words() {
        let mut mixed = bundle();
        mixed.key = bundle().key;
        let err = tls_config(&mixed, false).expect_err("mismatch");
        assert!(
            err.starts_with("the serving certificate and key do not match"),
            "{err}"
        );
        let mut garbage = bundle();
        garbage.key = "not a key".into();
        assert_eq!(
            tls_config(&garbage, false).expect_err("garbage"),
            "the serving key is not a PEM private key"
        );
    }

    #[test]
    fn malformed_reviews_are_refused_in_words() {
        assert!(
            decode(b"{")
                .expect_err("truncated")
                .starts_with("the body is not an AdmissionReview")
        );
        let empty = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert_eq!(
            decode(empty).expect_err("no request"),
            "the AdmissionReview carries no request"
        );
    }
}
