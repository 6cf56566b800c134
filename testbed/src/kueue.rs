//! Kueue next to the control plane, for the Kueue contract test: the real manager built by
//! `hack/kueue.sh` from the Go module proxy, its CRDs and JobSet's, and its admission webhooks
//! registered by URL on loopback, with only its TrainJob integration enabled.
//!
//! Kueue runs outside a cluster: no leader election, no internal certificate manager (its
//! certificates name in-cluster Services), a self-signed certificate for `127.0.0.1` instead.
//! Kueue v0.17 always reads its metrics certificate from `/etc/kueue/metrics/certs`, a path no flag
//! changes, so it runs in a mount namespace of its own where that directory is overlaid on `/etc`;
//! the host's `/etc` is never touched.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::process::{Component, Process, run};
use super::{Bed, BedError, base64, free_port, io, path_str, repo_root};

/// API groups whose webhooks Kueue serves for the TrainJob integration; the rest of its webhook
/// manifest belongs to integrations that are off.
const WEBHOOK_GROUPS: [&str; 2] = ["kueue.x-k8s.io", "trainer.kubeflow.org"];

/// What `hack/kueue.sh` built: the manager, the CRDs, the webhook manifest.
struct Build {
    binary: PathBuf,
    crds: PathBuf,
    webhooks: PathBuf,
}

fn build() -> Result<Build, BedError> {
    let script = repo_root().join("hack/kueue.sh");
    let out = run(Command::new("bash").arg(&script), "", "hack/kueue.sh")?;
    let dir = PathBuf::from(out.trim());
    let build = Build {
        binary: dir.join("kueue"),
        crds: dir.join("crds"),
        webhooks: dir.join("webhooks.yaml"),
    };
    if !build.binary.is_file() || !build.webhooks.is_file() {
        return Err(BedError::MissingBinaries(dir));
    }
    Ok(build)
}

impl Bed {
    /// Installs Kueue's CRDs and the shipped runtimes, starts Kueue, registers its webhooks and
    /// waits until the API server calls them.
    pub(crate) async fn start_kueue(&mut self, timeout: Duration) -> Result<(), BedError> {
        let build = build()?;
        self.kubectl(&["apply", "--server-side", "-f", &path_str(&build.crds)])?;
        let admin = self.client(super::Identity::Admin).await?;
        let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
        self.wait_until("Kueue's CRDs to be Established", timeout, || {
            let crds = crds.clone();
            async move {
                let Ok(list) = crds.list(&Default::default()).await else {
                    return false;
                };
                let ours = list
                    .items
                    .iter()
                    .filter(|c| ["kueue.x-k8s.io", "jobset.x-k8s.io"].contains(&c.spec.group.as_str()));
                let (mut all, mut established) = (0, 0);
                for crd in ours {
                    all += 1;
                    established += usize::from(super::crd_established(crd));
                }
                all >= 12 && all == established
            }
        })
        .await?;
        // Kueue's TrainJob webhook resolves the job's runtime to compute its pod sets.
        self.apply_kustomization("config/runtimes")?;

        let work = self.path("kueue");
        let certs = work.join("certs");
        let overlay = work.join("etc");
        let metrics_certs = overlay.join("kueue/metrics/certs");
        for dir in [&certs, &metrics_certs] {
            std::fs::create_dir_all(dir)
                .map_err(|source| io(format!("creating {}", dir.display()), source))?;
        }
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?.self_signed(&key)?;
        for dir in [&certs, &metrics_certs] {
            write(&dir.join("tls.crt"), &cert.pem())?;
            write(&dir.join("tls.key"), &key.serialize_pem())?;
        }

        let (webhook, health, metrics) = (free_port()?, free_port()?, free_port()?);
        let config = work.join("config.yaml");
        write(
            &config,
            &format!(
                "apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
manageJobsWithoutQueueName: false
leaderElection:
  leaderElect: false
health:
  healthProbeBindAddress: 127.0.0.1:{health}
metrics:
  bindAddress: 127.0.0.1:{metrics}
webhook:
  host: 127.0.0.1
  port: {webhook}
  certDir: {certs}
internalCertManagement:
  enable: false
integrations:
  frameworks: [trainer.kubeflow.org/trainjob]
featureGates:
  VisibilityOnDemand: false
  MultiKueue: false
",
                certs = certs.display()
            ),
        )?;
        let kubeconfig = self.kubeconfig_path(super::Identity::Admin);
        let args = [
            format!("--config={}", config.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            "--zap-log-level=2".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.path("kueue.log");
        let process = Process::spawn_with(Component::Kueue, &build.binary, &args, &log, |command| {
            overlay_etc(command, &overlay)
        })?;
        self.procs.push(process);
        self.wait_until("Kueue to become ready", timeout, || http_ok(health, "/readyz"))
            .await?;

        self.register_webhooks(&admin, &build.webhooks, webhook, &cert.pem())
            .await?;
        self.wait_for_webhooks(&admin, timeout).await
    }

    /// Registers Kueue's webhooks for Kueue's own objects and TrainJobs, by URL on loopback.
    async fn register_webhooks(
        &self,
        admin: &kube::Client,
        manifest: &Path,
        port: u16,
        ca: &str,
    ) -> Result<(), BedError> {
        let text = std::fs::read_to_string(manifest)
            .map_err(|source| io(format!("reading {}", manifest.display()), source))?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| BedError::Command(format!("parsing {}: {e}", manifest.display())))?;
        let ca = base64(ca.as_bytes());
        let apply = PatchParams::apply("trainjob-testbed").force();
        for mut doc in docs {
            let Some(webhooks) = doc.get_mut("webhooks").and_then(Value::as_array_mut) else {
                continue;
            };
            webhooks.retain(|w| {
                w["rules"].as_array().into_iter().flatten().any(|rule| {
                    rule["apiGroups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|g| WEBHOOK_GROUPS.contains(&g.as_str().unwrap_or_default()))
                })
            });
            for w in webhooks.iter_mut() {
                let path = w["clientConfig"]["service"]["path"].as_str().unwrap_or_default();
                w["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca});
            }
            let kube_err = |what: &str| {
                let what = what.to_string();
                move |source| BedError::Kube { what, source }
            };
            match doc["kind"].as_str() {
                Some("MutatingWebhookConfiguration") => {
                    doc["metadata"] = json!({"name": "kueue-mutating"});
                    let api: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
                    api.patch("kueue-mutating", &apply, &Patch::Apply(&doc))
                        .await
                        .map_err(kube_err("registering Kueue's mutating webhooks"))?;
                }
                Some("ValidatingWebhookConfiguration") => {
                    doc["metadata"] = json!({"name": "kueue-validating"});
                    let api: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
                    api.patch("kueue-validating", &apply, &Patch::Apply(&doc))
                        .await
                        .map_err(kube_err("registering Kueue's validating webhooks"))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The API server picks webhook configurations up asynchronously: until a dry-run TrainJob
    /// comes back suspended with Kueue's runtime patch, and a TrainJob naming a missing runtime
    /// is refused by Kueue, a test's first job could slip past Kueue.
    async fn wait_for_webhooks(&self, admin: &kube::Client, timeout: Duration) -> Result<(), BedError> {
        let gvk = GroupVersionKind::gvk("trainer.kubeflow.org", "v1alpha1", "TrainJob");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "trainjobs");
        let jobs: Api<DynamicObject> = Api::namespaced_with(admin.clone(), "default", &resource);
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let probe = |runtime: &str| -> Result<DynamicObject, BedError> {
            serde_json::from_value(json!({
                "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                "metadata": {"name": "kueue-probe", "labels": {"kueue.x-k8s.io/queue-name": "probe"}},
                "spec": {"runtimeRef": {"name": runtime}},
            }))
            .map_err(|e| BedError::Command(e.to_string()))
        };
        let (queued, missing) = (probe("mpi-openmpi")?, probe("kueue-probe-missing")?);
        self.wait_until("the API server to call Kueue's webhooks", timeout, || {
            let (jobs, queued, missing, dry_run) =
                (jobs.clone(), queued.clone(), missing.clone(), dry_run.clone());
            async move {
                let mutated = jobs.create(&dry_run, &queued).await.is_ok_and(|job| {
                    job.data["spec"]["suspend"] == json!(true)
                        && job.data["spec"]["runtimePatches"]
                            .as_array()
                            .is_some_and(|p| p.iter().any(|p| p["manager"] == "kueue.x-k8s.io/manager"))
                });
                let validated = matches!(
                    jobs.create(&dry_run, &missing).await,
                    Err(kube::Error::Api(e)) if e.message.contains("vtrainjob.kb.io")
                );
                mutated && validated
            }
        })
        .await
    }
}

fn write(path: &Path, content: &str) -> Result<(), BedError> {
    std::fs::write(path, content).map_err(|source| io(format!("writing {}", path.display()), source))
}

/// Runs the command in a private mount namespace where `extra` is overlaid on `/etc`.
fn overlay_etc(command: &mut Command, extra: &Path) -> Result<(), BedError> {
    use std::os::unix::process::CommandExt;
    let options = CString::new(format!("lowerdir={}:/etc", extra.display()))
        .map_err(|e| BedError::Command(format!("overlay options: {e}")))?;
    // SAFETY: unshare and mount are async-signal-safe system calls; the closure only reads
    // `options`, allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Private first, or the overlay would propagate back to the host's mount namespace.
            check(libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"overlay".as_ptr(),
                c"/etc".as_ptr(),
                c"overlay".as_ptr(),
                libc::MS_RDONLY,
                options.as_ptr().cast(),
            ))
        });
    }
    Ok(())
}

/// Whether a plain HTTP GET of `path` on loopback `port` answers 200.
async fn http_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200")
}
