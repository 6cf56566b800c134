//! What a job's MPI pods need to report progress to the status server (`progress`), as
//! upstream's `TrainJobStatus` plugin gives it: three variables naming the URL, the CA file and
//! the token file, and one projected volume holding a service account token for the job's own
//! audience (rotated by the kubelet; clients re-read the file) and the CA from the job's hostfile
//! ConfigMap. Upstream gives them to the trainer pods only; here the launcher and every worker
//! get them, because rank 0 runs on a worker unless the launcher runs ranks, and ranks started
//! over SSH see the worker's files, with the launcher's variables forwarded by `mpirun`.

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, EnvVar, KeyToPath, PodSpec, ProjectedVolumeSource, ServiceAccountTokenProjection,
    Volume, VolumeMount, VolumeProjection,
};

use crate::merge::{upsert_by, upsert_env};
use crate::names;
use crate::plan::Reporting;
use crate::progress;

/// The status server's URL, with the job's path.
pub const URL_ENV: &str = "KUBEFLOW_TRAINER_SERVER_URL";
/// The CA file to verify it with.
pub const CA_ENV: &str = "KUBEFLOW_TRAINER_SERVER_CA_CERT";
/// The token file to authenticate with.
pub const TOKEN_ENV: &str = "KUBEFLOW_TRAINER_SERVER_TOKEN";
/// Where the volume is mounted (upstream's path).
pub const DIR: &str = "/var/run/secrets/kubeflow/trainer";
/// The volume's name (upstream's).
pub const VOLUME: &str = "kubeflow-trainer-token";
/// Key of the CA in the hostfile ConfigMap, and its file name.
pub const CA_KEY: &str = "ca.crt";
const TOKEN_FILE: &str = "token";
/// Lifetime of a token; the kubelet renews it at 80 %.
const TOKEN_SECONDS: i64 = 3600;

/// Gives every container of `spec`, a pod of job `namespace/name`, the variables and the volume.
pub fn inject(spec: &mut PodSpec, namespace: &str, name: &str, reporting: &Reporting) {
    let vars = [
        (
            URL_ENV,
            format!("{}{}", reporting.url, progress::path(namespace, name)),
        ),
        (CA_ENV, format!("{DIR}/{CA_KEY}")),
        (TOKEN_ENV, format!("{DIR}/{TOKEN_FILE}")),
    ]
    .map(|(name, value)| EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    });
    for c in &mut spec.containers {
        upsert_env(c, &vars);
        let mount = VolumeMount {
            name: VOLUME.into(),
            mount_path: DIR.into(),
            read_only: Some(true),
            ..Default::default()
        };
        upsert_by(c.volume_mounts.get_or_insert_default(), mount, |m| &m.name);
    }
    let volume = Volume {
        name: VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(progress::audience(namespace, name)),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: TOKEN_FILE.into(),
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: names::hostfile_configmap(name),
                        items: Some(vec![KeyToPath {
                            key: CA_KEY.into(),
                            path: CA_KEY.into(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
            ]),
            default_mode: None,
        }),
        ..Default::default()
    };
    upsert_by(spec.volumes.get_or_insert_default(), volume, |v| &v.name);
    // What the ServiceAccount admission plugin would fill in: the API server refuses a token
    // projection from a pod that names no account.
    if spec.service_account_name.is_none() {
        spec.service_account_name = Some(spec.service_account.clone().unwrap_or_else(|| "default".into()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::desired::{hostfile, pods};
    use crate::fixtures::{job, plan};

    fn env<'a>(c: &'a k8s_openapi::api::core::v1::Container, name: &str) -> Option<&'a str> {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    #[test]
    fn launcher_and_workers_get_upstreams_variables_token_and_ca_and_open_mpi_forwards_them() {
        let j = job(json!({"trainer": {"numNodes": 2}}));
        let mut p = plan(&j, "mpi-openmpi");
        let ns = j.metadata.namespace.clone().unwrap_or_default();
        let without = pods::of_jobs(&j, &p, 0, |_| true);
        assert!(
            without.iter().all(|pod| pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .all(|c| env(c, URL_ENV).is_none())),
            "no variables while the status server is off"
        );
        p.cluster.reporting = Some(Reporting {
            url: "https://trainjob-operator-webhook.trainjob-system.svc:10443".into(),
            ca: "-----BEGIN CERTIFICATE-----\n...".into(),
        });
        let cm = hostfile::configmap(&j, &p);
        assert_eq!(
            cm.data.as_ref().and_then(|d| d.get(CA_KEY)).map(String::as_str),
            Some("-----BEGIN CERTIFICATE-----\n...")
        );
        for pod in pods::of_jobs(&j, &p, 0, |_| true) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let spec = pod.spec.expect("spec");
            let c = spec.containers.iter().find(|c| c.name == "node").expect("node");
            assert_eq!(
                env(c, URL_ENV),
                Some(format!(
                    "https://trainjob-operator-webhook.trainjob-system.svc:10443/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/pi/status"
                ).as_str()),
                "{name}"
            );
            assert_eq!(env(c, CA_ENV), Some("/var/run/secrets/kubeflow/trainer/ca.crt"));
            assert_eq!(env(c, TOKEN_ENV), Some("/var/run/secrets/kubeflow/trainer/token"));
            let mount = c
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == VOLUME)
                .expect("mount");
            assert_eq!((mount.mount_path.as_str(), mount.read_only), (DIR, Some(true)));
            let volume = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == VOLUME)
                .expect("volume");
            let sources = volume
                .projected
                .as_ref()
                .and_then(|p| p.sources.clone())
                .unwrap_or_default();
            let token = sources[0].service_account_token.as_ref().expect("token");
            assert_eq!(
                token.audience.as_deref(),
                Some(format!("trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/pi/status").as_str())
            );
            assert_eq!(
                (token.expiration_seconds, token.path.as_str()),
                (Some(3600), "token")
            );
            let ca = sources[1].config_map.as_ref().expect("ca");
            assert_eq!(ca.name, "pi-mpi-hostfile");
            if name.contains("launcher") {
                let forwarded = env(c, "OMPI_MCA_mca_base_env_list").unwrap_or_default();
                for var in [URL_ENV, CA_ENV, TOKEN_ENV] {
                    assert!(forwarded.split(';').any(|v| v == var), "{var} in {forwarded}");
                }
            }
        }
    }
}
