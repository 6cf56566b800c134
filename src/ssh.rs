//! The per-job SSH identity: one key pair, generated once, stored in an immutable Secret that the
//! launcher and workers mount. The private key never leaves the Secret: it is not logged, put in
//! Events, status or metrics, and [`KeyPair`]'s `Debug` redacts it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use ssh_key::private::{KeypairData, RsaKeypair};
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, EcdsaCurve, LineEnding, PrivateKey};

use crate::api::TrainJob;

/// Secret key holding the private key (OpenSSH format).
pub const PRIVATE_KEY: &str = "ssh-privatekey";
/// Secret key holding the public key (authorized_keys line).
pub const PUBLIC_KEY: &str = "ssh-publickey";

/// Key algorithm of the per-job SSH keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256: FIPS-approved and fast (about 0.1 ms per key). The default.
    #[default]
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// ECDSA on NIST P-521 (what upstream Trainer and MPI Operator use).
    EcdsaP521,
    /// Ed25519: fastest, but not FIPS 186-4 approved.
    Ed25519,
    /// RSA 3072: slow to generate (about a second), generated off the async executor.
    Rsa3072,
    /// RSA 4096: slower still.
    Rsa4096,
}

impl KeyAlgorithm {
    /// Every algorithm, with its command-line name.
    pub const ALL: [(&'static str, KeyAlgorithm); 6] = [
        ("ecdsa-p256", KeyAlgorithm::EcdsaP256),
        ("ecdsa-p384", KeyAlgorithm::EcdsaP384),
        ("ecdsa-p521", KeyAlgorithm::EcdsaP521),
        ("ed25519", KeyAlgorithm::Ed25519),
        ("rsa-3072", KeyAlgorithm::Rsa3072),
        ("rsa-4096", KeyAlgorithm::Rsa4096),
    ];

    /// Whether FIPS 186 approves it for signatures (Ed25519 only joined in FIPS 186-5, which the
    /// validated OpenSSH builds in use do not offer).
    pub fn fips_approved(self) -> bool {
        self != KeyAlgorithm::Ed25519
    }

    /// Whether generation is slow enough to need a blocking thread.
    pub fn is_slow(self) -> bool {
        matches!(self, KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096)
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(_, a)| a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?");
        f.write_str(name)
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown SSH key algorithm {s:?}; use one of {}", names.join(", "))
            })
    }
}

/// Key generation failures.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("generating a {algorithm} SSH key: {source}")]
    Generate {
        algorithm: KeyAlgorithm,
        #[source]
        source: ssh_key::Error,
    },
    #[error("encoding the SSH private key: {0}")]
    Encode(#[source] ssh_key::Error),
    #[error("SSH key generation task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A generated key pair in OpenSSH encodings.
pub struct KeyPair {
    private: ssh_key::private::PrivateKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("algorithm", &self.private.algorithm().as_str())
            .field("private", &"[redacted]")
            .finish()
    }
}

impl KeyPair {
    /// Generates a key pair. RSA takes about a second: call it from a blocking thread.
    pub fn generate(algorithm: KeyAlgorithm, comment: &str) -> Result<KeyPair, SshError> {
        let err = |source| SshError::Generate { algorithm, source };
        let ecdsa = |curve| PrivateKey::random(&mut OsRng, Algorithm::Ecdsa { curve });
        let mut private = match algorithm {
            KeyAlgorithm::EcdsaP256 => ecdsa(EcdsaCurve::NistP256),
            KeyAlgorithm::EcdsaP384 => ecdsa(EcdsaCurve::NistP384),
            KeyAlgorithm::EcdsaP521 => ecdsa(EcdsaCurve::NistP521),
            KeyAlgorithm::Ed25519 => PrivateKey::random(&mut OsRng, Algorithm::Ed25519),
            KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                let bits = if algorithm == KeyAlgorithm::Rsa3072 {
                    3072
                } else {
                    4096
                };
                RsaKeypair::random(&mut OsRng, bits).and_then(|kp| PrivateKey::new(KeypairData::Rsa(kp), ""))
            }
        }
        .map_err(err)?;
        private.set_comment(comment);
        Ok(KeyPair { private })
    }

    /// [`KeyPair::generate`] without holding up the async executor: the slow algorithms (RSA)
    /// run on a blocking thread, so one job's key never delays another job's reconcile.
    pub async fn generate_off_executor(
        algorithm: KeyAlgorithm,
        comment: String,
    ) -> Result<KeyPair, SshError> {
        if algorithm.is_slow() {
            tokio::task::spawn_blocking(move || KeyPair::generate(algorithm, &comment)).await?
        } else {
            KeyPair::generate(algorithm, &comment)
        }
    }

    /// The public key as an `authorized_keys` line.
    pub fn public_openssh(&self) -> String {
        self.private.public_key().to_openssh().unwrap_or_default()
    }

    /// The Secret `<job>-mpi-ssh-auth` holding this key pair, owned by `job`, immutable.
    pub fn secret(&self, job: &TrainJob) -> Result<Secret, SshError> {
        let private = self
            .private
            .to_openssh(LineEnding::LF)
            .map_err(SshError::Encode)?;
        let mut public = self.public_openssh();
        public.push('\n');
        let name = crate::names::ssh_secret(job.metadata.name.as_deref().unwrap_or_default());
        Ok(Secret {
            metadata: crate::names::child_meta(job, &name),
            type_: Some("kubernetes.io/ssh-auth".into()),
            immutable: Some(true),
            data: Some(BTreeMap::from([
                (PRIVATE_KEY.to_string(), ByteString(private.as_bytes().to_vec())),
                (PUBLIC_KEY.to_string(), ByteString(public.into_bytes())),
            ])),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> TrainJob {
        let mut job = TrainJob::new("pi", Default::default());
        job.metadata.namespace = Some("team-a".into());
        job.metadata.uid = Some("uid-1".into());
        job
    }

    #[test]
    fn algorithms_parse_and_print_by_name() {
        for (name, algorithm) in KeyAlgorithm::ALL {
            assert_eq!(name.parse::<KeyAlgorithm>(), Ok(algorithm));
            assert_eq!(algorithm.to_string(), name);
        }
        let err = "dsa".parse::<KeyAlgorithm>().unwrap_err();
        assert!(err.contains("ecdsa-p256"), "{err}");
        assert!(!KeyAlgorithm::Ed25519.fips_approved());
        assert!(KeyAlgorithm::EcdsaP256.fips_approved());
    }

    #[test]
    fn fast_algorithms_make_distinct_openssh_keys() {
        for (algorithm, prefix) in [
            (KeyAlgorithm::EcdsaP256, "ecdsa-sha2-nistp256 "),
            (KeyAlgorithm::EcdsaP384, "ecdsa-sha2-nistp384 "),
            (KeyAlgorithm::EcdsaP521, "ecdsa-sha2-nistp521 "),
            (KeyAlgorithm::Ed25519, "ssh-ed25519 "),
        ] {
            let a = KeyPair::generate(algorithm, "trainjob").expect("generates");
            let b = KeyPair::generate(algorithm, "trainjob").expect("generates");
            assert!(
                a.public_openssh().starts_with(prefix),
                "{algorithm}: {}",
                a.public_openssh()
            );
            assert_ne!(
                a.public_openssh(),
                b.public_openssh(),
                "{algorithm} keys are random"
            );
        }
    }

    #[test]
    fn secret_is_immutable_owned_and_typed() {
        let keys = KeyPair::generate(KeyAlgorithm::EcdsaP256, "team-a/pi").expect("generates");
        let secret = keys.secret(&job()).expect("secret");
        assert_eq!(secret.metadata.name.as_deref(), Some("pi-mpi-ssh-auth"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/ssh-auth"));
        assert_eq!(secret.immutable, Some(true));
        let owner = &secret.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("TrainJob", Some(true)));
        let data = secret.data.expect("data");
        let private = String::from_utf8(data[PRIVATE_KEY].0.clone()).expect("utf8");
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let public = String::from_utf8(data[PUBLIC_KEY].0.clone()).expect("utf8");
        assert!(public.ends_with(" team-a/pi\n"), "{public}");
    }

    #[test]
    fn debug_output_never_shows_the_private_key() {
        let keys = KeyPair::generate(KeyAlgorithm::Ed25519, "x").expect("generates");
        let private = keys.private.to_openssh(LineEnding::LF).expect("encodes");
        let shown = format!("{keys:?}");
        assert!(shown.contains("[redacted]"));
        let body = private.lines().nth(1).expect("key body");
        assert!(!shown.contains(body));
    }
}
