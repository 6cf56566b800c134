//! The webhook's serving certificate, from one of two sources:
//!
//! - **Self-managed** (the default): the operator makes a CA and a serving certificate, keeps them
//!   in a Secret that every replica shares, publishes the CA as the `caBundle` of its webhook
//!   configurations, and renews both when a third of their lifetime is left. The bundle keeps the
//!   previous CA too, so a replica still serving the old certificate stays trusted meanwhile.
//! - **Files** another tool writes (cert-manager, see `config/certmanager`): `tls.crt` and
//!   `tls.key` in a directory, re-read when they change; that tool publishes the CA.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;

use crate::names;

/// Secret annotation: when the serving certificate expires (seconds since the epoch).
const NOT_AFTER: &str = "trainer.kubeflow.org/webhook-cert-not-after";
/// Secret annotation: the host names and addresses the certificate is for.
const HOSTS: &str = "trainer.kubeflow.org/webhook-cert-hosts";

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Made and renewed by the operator.
    SelfManaged(SelfManaged),
    /// `tls.crt` and `tls.key` in this directory, written by another tool.
    Files(PathBuf),
}

/// Settings of the self-managed certificate.
#[derive(Clone, Debug)]
pub struct SelfManaged {
    /// Namespace of the Secret (the operator's own).
    pub namespace: String,
    /// Name of the Secret.
    pub secret: String,
    /// DNS names and IP addresses the API server reaches the webhook at.
    pub hosts: Vec<String>,
    /// Lifetime of a certificate.
    pub validity: Duration,
    /// Name of the Mutating- and ValidatingWebhookConfiguration whose `caBundle` to keep current.
    pub configuration: String,
}

impl SelfManaged {
    /// For the webhook behind Service `service` in `namespace`: a certificate for the Service's
    /// names (short and with the cluster domain) plus `extra_hosts`, kept in Secret
    /// `<service>-certs` (the name `config/rbac` lets the operator replace).
    pub fn for_service(
        service: &str,
        namespace: &str,
        cluster_domain: &str,
        extra_hosts: Vec<String>,
        validity: Duration,
        configuration: &str,
    ) -> SelfManaged {
        let mut hosts = vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.{cluster_domain}"),
        ];
        hosts.extend(extra_hosts);
        SelfManaged {
            namespace: namespace.into(),
            secret: format!("{service}-certs"),
            hosts,
            validity,
            configuration: configuration.into(),
        }
    }
}

/// A certificate chain to serve, and the CAs clients should trust.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// PEM CA certificates: the current one first, then the previous one.
    pub ca: String,
    /// PEM serving certificate.
    pub cert: String,
    /// PEM private key of the serving certificate.
    pub key: String,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Bundle")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// Why no certificate could be made, read or published.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Kubernetes API error while {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building the caBundle patch: {0}")]
    Patch(#[source] serde_json::Error),
    #[error("Secret {0} holds no ca.crt, tls.crt and tls.key: delete it and the operator makes a new one")]
    Incomplete(String),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Kube { what, source }
}

fn epoch_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A new CA and a serving certificate for `hosts`, valid from a minute ago (clock skew) for
/// `validity`. `previous_ca` stays in the bundle after the new CA.
pub fn generate(
    hosts: &[String],
    validity: Duration,
    previous_ca: Option<&str>,
) -> Result<(Bundle, i64), CertError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let now = epoch_seconds(SystemTime::now());
    let not_after = now.saturating_add(i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2));
    let at = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "trainjob-operator webhook CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = at(now - 60);
    ca.not_after = at(not_after);
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut leaf = CertificateParams::new(hosts.to_vec())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map_or("trainjob-operator", String::as_str),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = at(now - 60);
    leaf.not_after = at(not_after);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;

    let mut bundle = issuer.pem();
    if let Some(prev) = previous_ca.and_then(first_pem) {
        bundle.push_str(&prev);
    }
    Ok((
        Bundle {
            ca: bundle,
            cert: cert.pem(),
            key: key.serialize_pem(),
        },
        not_after,
    ))
}

/// The first PEM block of `pem`.
fn first_pem(pem: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    pem.find(END).map(|i| format!("{}\n", &pem[..i + END.len()]))
}

/// Whether the Secret's certificate must be replaced: unreadable, for other hosts, or with less
/// than a third of its lifetime left.
pub fn needs_renewal(secret: &Secret, hosts: &[String], validity: Duration, now: SystemTime) -> bool {
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let not_after = annotations.get(NOT_AFTER).and_then(|v| v.parse::<i64>().ok());
    let same_hosts = annotations.get(HOSTS) == Some(&hosts.join(","));
    let margin = i64::try_from(validity.as_secs() / 3).unwrap_or(i64::MAX);
    !same_hosts
        || not_after.is_none_or(|t| t.saturating_sub(epoch_seconds(now)) < margin)
        || from_secret(secret).is_none()
}

fn from_secret(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok());
    Some(Bundle {
        ca: text("ca.crt")?,
        cert: text("tls.crt")?,
        key: text("tls.key")?,
    })
}

fn secret(cfg: &SelfManaged, bundle: &Bundle, not_after: i64, resource_version: Option<String>) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(cfg.secret.clone()),
            namespace: Some(cfg.namespace.clone()),
            resource_version,
            labels: Some([(names::MANAGED_BY_LABEL.to_string(), names::MANAGED_BY.to_string())].into()),
            annotations: Some(
                [
                    (NOT_AFTER.to_string(), not_after.to_string()),
                    (HOSTS.to_string(), cfg.hosts.join(",")),
                ]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("ca.crt".to_string(), bytes(&bundle.ca)),
                ("tls.crt".to_string(), bytes(&bundle.cert)),
                ("tls.key".to_string(), bytes(&bundle.key)),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

/// The current bundle of the self-managed source: the Secret's, renewed first when due. When
/// replicas race, the first write wins and the others read it back.
pub async fn ensure(client: &Client, cfg: &SelfManaged) -> Result<Bundle, CertError> {
    let api = Api::<Secret>::namespaced(client.clone(), &cfg.namespace);
    let what = || format!("reading Secret {}/{}", cfg.namespace, cfg.secret);
    let existing = api.get_opt(&cfg.secret).await.map_err(kube_err(what()))?;
    if let Some(s) = &existing
        && !needs_renewal(s, &cfg.hosts, cfg.validity, SystemTime::now())
    {
        return from_secret(s).ok_or_else(|| CertError::Incomplete(cfg.secret.clone()));
    }
    let previous = existing.as_ref().and_then(from_secret);
    let (bundle, not_after) = generate(&cfg.hosts, cfg.validity, previous.as_ref().map(|b| b.ca.as_str()))?;
    let written = match &existing {
        None => api
            .create(&PostParams::default(), &secret(cfg, &bundle, not_after, None))
            .await
            .map(|_| ()),
        Some(s) => {
            let rv = s.metadata.resource_version.clone();
            api.replace(
                &cfg.secret,
                &PostParams::default(),
                &secret(cfg, &bundle, not_after, rv),
            )
            .await
            .map(|_| ())
        }
    };
    match written {
        Ok(()) => {
            tracing::info!(secret = %cfg.secret, hosts = ?cfg.hosts, "made a new webhook serving certificate");
            Ok(bundle)
        }
        // Another replica wrote first: use its certificate.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = api.get(&cfg.secret).await.map_err(kube_err(what()))?;
            from_secret(&s).ok_or_else(|| CertError::Incomplete(cfg.secret.clone()))
        }
        Err(e) => Err(kube_err(format!(
            "writing Secret {}/{}",
            cfg.namespace, cfg.secret
        ))(e)),
    }
}

/// Sets `caBundle` on every webhook of the configurations named `name`. Returns the kinds that
/// do not exist (admission is then off until the install adds them).
pub async fn publish(client: &Client, name: &str, ca: &str) -> Result<Vec<&'static str>, CertError> {
    let mut missing = Vec::new();
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let clients = |c: MutatingWebhookConfiguration| {
        c.webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| (w.name, w.client_config.ca_bundle))
    };
    if !publish_one(&mutating, name, ca, clients).await? {
        missing.push("MutatingWebhookConfiguration");
    }
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let clients = |c: ValidatingWebhookConfiguration| {
        c.webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| (w.name, w.client_config.ca_bundle))
    };
    if !publish_one(&validating, name, ca, clients).await? {
        missing.push("ValidatingWebhookConfiguration");
    }
    Ok(missing)
}

/// JSON-patches the `caBundle` of each webhook whose bundle differs, guarded by a test of its
/// name so a concurrent reorder cannot misplace it. `false` when the configuration is absent.
async fn publish_one<K, I>(
    api: &Api<K>,
    name: &str,
    ca: &str,
    webhooks: impl FnOnce(K) -> I,
) -> Result<bool, CertError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    I: Iterator<Item = (String, Option<ByteString>)>,
{
    let kind = K::kind(&()).to_string();
    let what = format!("publishing the webhook CA in {kind} {name}");
    let Some(config) = api.get_opt(name).await.map_err(kube_err(what.clone()))? else {
        return Ok(false);
    };
    let mut ops = Vec::new();
    for (i, (webhook, bundle)) in webhooks(config).enumerate() {
        if bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca.as_bytes()) {
            ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook}));
            ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": ByteString(ca.as_bytes().to_vec())}));
        }
    }
    if !ops.is_empty() {
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::Value::Array(ops)).map_err(CertError::Patch)?;
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map_err(kube_err(what))?;
        tracing::info!(configuration = name, %kind, "published the webhook CA");
    }
    Ok(true)
}

/// The bundle of the files source. Its tool publishes the CA to the webhook configurations;
/// `ca.crt` beside the certificate (cert-manager writes one) is what pods verify the status
/// server with, and without it they get no progress reporting.
pub fn read_files(dir: &std::path::Path) -> Result<Bundle, CertError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CertError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    Ok(Bundle {
        ca: read("ca.crt").unwrap_or_default(),
        cert: read("tls.crt")?,
        key: read("tls.key")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_give_the_ca_beside_the_certificate_when_there_is_one() {
        let dir = std::env::temp_dir().join(format!("trainjob-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("tls.crt"), "CERT").expect("write");
        std::fs::write(dir.join("tls.key"), "KEY").expect("write");
        assert_eq!(read_files(&dir).expect("bundle").ca, "", "no ca.crt: no CA");
        std::fs::write(dir.join("ca.crt"), "CA").expect("write");
        let bundle = read_files(&dir).expect("bundle");
        assert_eq!((bundle.ca.as_str(), bundle.cert.as_str()), ("CA", "CERT"));
        std::fs::remove_file(dir.join("tls.key")).expect("remove");
        assert!(matches!(read_files(&dir), Err(CertError::Read { .. })));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    fn hosts() -> Vec<String> {
        vec![
            "trainjob-operator-webhook.trainjob-system.svc".into(),
            "127.0.0.1".into(),
        ]
    }

    fn cfg() -> SelfManaged {
        SelfManaged {
            namespace: "trainjob-system".into(),
            secret: "trainjob-operator-webhook-certs".into(),
            hosts: hosts(),
            validity: Duration::from_secs(90 * 24 * 3600),
            configuration: "trainjob-operator".into(),
        }
    }

    #[test]
    fn the_shipped_service_gets_the_secret_the_shipped_role_may_replace() {
        let cfg = SelfManaged::for_service(
            "trainjob-operator-webhook",
            "trainjob-system",
            "cluster.local",
            vec!["127.0.0.1".into()],
            Duration::from_secs(60),
            "trainjob-operator",
        );
        assert_eq!(
            cfg.hosts,
            [
                "trainjob-operator-webhook.trainjob-system.svc",
                "trainjob-operator-webhook.trainjob-system.svc.cluster.local",
                "127.0.0.1",
            ]
        );
        let role = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/rbac/webhook_role.yaml"
        ))
        .expect("webhook_role.yaml");
        assert!(
            role.contains(&format!("resourceNames: [{}]", cfg.secret)),
            "{role}"
        );
    }

    #[test]
    fn a_fresh_secret_is_kept_until_a_third_of_its_life_is_left() {
        let (bundle, not_after) = generate(&hosts(), cfg().validity, None).expect("generate");
        let s = secret(&cfg(), &bundle, not_after, None);
        let now = SystemTime::now();
        assert!(!needs_renewal(&s, &hosts(), cfg().validity, now));
        let later = now + Duration::from_secs(61 * 24 * 3600);
        assert!(
            needs_renewal(&s, &hosts(), cfg().validity, later),
            "29 days left of 90"
        );
        assert!(
            needs_renewal(&s, &hosts()[..1], cfg().validity, now),
            "other hosts"
        );
        let mut broken = s.clone();
        broken.data.as_mut().expect("data").remove("tls.key");
        assert!(needs_renewal(&broken, &hosts(), cfg().validity, now));
        assert_eq!(from_secret(&s), Some(bundle));
    }

    #[test]
    fn a_renewed_bundle_trusts_the_new_and_the_previous_ca_only() {
        let (first, _) = generate(&hosts(), cfg().validity, None).expect("first");
        let (second, _) = generate(&hosts(), cfg().validity, Some(&first.ca)).expect("second");
        let (third, _) = generate(&hosts(), cfg().validity, Some(&second.ca)).expect("third");
        let blocks = |pem: &str| pem.matches("BEGIN CERTIFICATE").count();
        assert_eq!(
            (blocks(&first.ca), blocks(&second.ca), blocks(&third.ca)),
            (1, 2, 2)
        );
        assert!(
            second.ca.ends_with(&first.ca),
            "the previous CA follows the new one"
        );
        assert!(
            third
                .ca
                .ends_with(first_pem(&second.ca).as_deref().unwrap_or("?"))
        );
        assert!(!third.ca.contains(&first.ca));
        assert!(
            !format!("{first:?}").contains("PRIVATE KEY"),
            "Debug never shows the key"
        );
    }
}
