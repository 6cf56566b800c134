//! The operator's own admission webhooks in the bed: `config/webhook/manifests.yaml` as shipped,
//! with each Service reference replaced by a URL on loopback where the operator under test (or
//! `make run`'s) serves them. No caBundle: the operator publishes its self-managed CA itself.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::{Bed, BedError, io, repo_root};

/// How [`Bed::register_webhook_copy`] changes the shipped configurations.
#[derive(Clone, Debug, Default)]
pub struct WebhookCopy {
    /// Name of the configurations (and prefix of each webhook's name) instead of the shipped one.
    pub name: Option<String>,
    /// Only requests in this namespace go to the copy.
    pub namespace: Option<String>,
    /// PEM CA bundle to trust, as cert-manager's CA injector would set it.
    pub ca: Option<String>,
}

impl Bed {
    /// Registers the shipped webhook configurations for an operator serving HTTPS on
    /// `127.0.0.1:port`.
    pub async fn register_operator_webhooks(&self, port: u16) -> Result<(), BedError> {
        self.register_webhook_copy(port, &WebhookCopy::default()).await
    }

    /// Registers the shipped webhook configurations as `copy` says: under another name, for one
    /// namespace only, with a given CA (for tests of a second webhook server).
    pub async fn register_webhook_copy(&self, port: u16, copy: &WebhookCopy) -> Result<(), BedError> {
        let path = repo_root().join("config/webhook/manifests.yaml");
        let text = std::fs::read_to_string(&path)
            .map_err(|source| io(format!("reading {}", path.display()), source))?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| BedError::Command(format!("parsing {}: {e}", path.display())))?;
        let admin = self.client(super::Identity::Admin).await?;
        let apply = PatchParams::apply("trainjob-testbed").force();
        for mut doc in docs {
            if let Some(name) = &copy.name {
                doc["metadata"]["name"] = json!(name);
            }
            for w in doc["webhooks"].as_array_mut().into_iter().flatten() {
                let service_path = w["clientConfig"]["service"]["path"].as_str().unwrap_or_default();
                w["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}{service_path}")});
                if let Some(ca) = &copy.ca {
                    w["clientConfig"]["caBundle"] = json!(super::base64(ca.as_bytes()));
                }
                if let Some(name) = &copy.name {
                    let suffix = w["name"].as_str().unwrap_or_default().to_string();
                    w["name"] = json!(format!("{name}.{suffix}"));
                }
                if let Some(ns) = &copy.namespace {
                    w["namespaceSelector"] = json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
                }
            }
            let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let what = |kind: &str| {
                let what = format!("registering {kind} {name}");
                move |source| BedError::Kube { what, source }
            };
            match doc["kind"].as_str() {
                Some("MutatingWebhookConfiguration") => {
                    Api::<MutatingWebhookConfiguration>::all(admin.clone())
                        .patch(&name, &apply, &Patch::Apply(&doc))
                        .await
                        .map_err(what("MutatingWebhookConfiguration"))?;
                }
                Some("ValidatingWebhookConfiguration") => {
                    Api::<ValidatingWebhookConfiguration>::all(admin.clone())
                        .patch(&name, &apply, &Patch::Apply(&doc))
                        .await
                        .map_err(what("ValidatingWebhookConfiguration"))?;
                }
                other => {
                    return Err(BedError::Command(format!(
                        "{}: unexpected kind {other:?}",
                        path.display()
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Bed {
    /// Makes the webhook Service's name (`trainjob-operator-webhook.trainjob-system.svc`)
    /// resolve, for the real node's pods, to the host, where the operator under test (or `make
    /// run`'s) serves the status server on every address: a headless Service whose one endpoint
    /// is the node bridge's host address.
    pub async fn expose_status_server(&self, port: u16) -> Result<(), BedError> {
        use k8s_openapi::api::core::v1::Service;
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let admin = self.client(super::Identity::Admin).await?;
        let apply = PatchParams::apply("trainjob-testbed").force();
        let what = |what: &'static str| {
            move |source| BedError::Kube {
                what: what.to_string(),
                source,
            }
        };
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "trainjob-operator-webhook", "namespace": "trainjob-system"},
            "spec": {"clusterIP": "None", "ports": [{"name": "status", "port": port, "protocol": "TCP"}]},
        });
        Api::<Service>::namespaced(admin.clone(), "trainjob-system")
            .patch("trainjob-operator-webhook", &apply, &Patch::Apply(&service))
            .await
            .map_err(what("creating the webhook Service"))?;
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "trainjob-operator-webhook-host", "namespace": "trainjob-system",
                         "labels": {"kubernetes.io/service-name": "trainjob-operator-webhook",
                                    "endpointslice.kubernetes.io/managed-by": "trainjob-testbed"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [super::node::HOST_ADDRESS], "conditions": {"ready": true}}],
            "ports": [{"name": "status", "port": port, "protocol": "TCP"}],
        });
        Api::<EndpointSlice>::namespaced(admin, "trainjob-system")
            .patch("trainjob-operator-webhook-host", &apply, &Patch::Apply(&slice))
            .await
            .map_err(what("creating the webhook Service's endpoint"))?;
        Ok(())
    }
}
