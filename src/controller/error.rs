//! A failed reconcile, by the step that failed, and how to tell the errors apart: permanent ones
//! fail the job with a condition, the others are retried; every variant has one stable label for
//! `trainjob_reconcile_errors_total`.

use crate::resolve::ResolveError;
use crate::ssh::SshError;
use crate::validate::ValidateError;
use crate::{desired, lifecycle};

use super::{apply, dereference};

/// A failed reconcile, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Dereference(#[from] dereference::Error),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::Error),
    /// Generating the job's key pair.
    #[error(transparent)]
    Key(#[from] SshError),
    #[error(transparent)]
    Build(#[from] desired::Error),
    #[error(transparent)]
    Apply(#[from] apply::Error),
}

impl Error {
    /// The `Failed` reason when the error cannot heal without the user changing something.
    pub fn permanent(&self) -> Option<&'static str> {
        match self {
            Error::Dereference(e) => e.permanent(),
            Error::Resolve(e) => Some(e.reason()),
            Error::Validate(e) => Some(e.reason()),
            Error::Lifecycle(e) => e.permanent(),
            Error::Key(_) | Error::Build(_) => None,
            Error::Apply(e) => e.permanent(),
        }
    }

    /// Stable label for the `trainjob_reconcile_errors` metric: one per variant.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Dereference(e) => e.label(),
            Error::Resolve(e) => e.label(),
            Error::Validate(e) => e.label(),
            Error::Lifecycle(e) => e.label(),
            Error::Key(_) => "ssh_keygen",
            Error::Build(e) => e.label(),
            Error::Apply(e) => e.label(),
        }
    }
}

/// Whether `error` comes from writing into a namespace that is being deleted (or is gone).
pub fn namespace_ending(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(kube::Error::Api(status)) = e.downcast_ref::<kube::Error>() {
            let causes = status
                .details
                .as_ref()
                .map(|d| d.causes.as_slice())
                .unwrap_or_default();
            let terminating = status.code == 403 && causes.iter().any(|c| c.reason == "NamespaceTerminating");
            let gone = status.code == 404 && status.details.as_ref().is_some_and(|d| d.kind == "namespaces");
            return terminating || gone;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(status: serde_json::Value) -> Error {
        let status: kube::core::Status = serde_json::from_value(status).expect("status");
        Error::Apply(apply::Error::Kube {
            action: "creating pod pi-node-0-0".into(),
            source: kube::Error::Api(Box::new(status)),
        })
    }

    #[test]
    fn writes_into_a_namespace_being_deleted_are_told_apart() {
        let terminating = api_error(serde_json::json!({
            "code": 403, "reason": "Forbidden",
            "message": "pods \"pi-node-0-0\" is forbidden: unable to create new content in namespace x because it is being terminated",
            "details": {"name": "pi-node-0-0", "kind": "pods", "causes": [
                {"reason": "NamespaceTerminating", "message": "namespace x is being terminated", "field": "metadata.namespace"}]},
        }));
        assert!(namespace_ending(&terminating));
        let gone = api_error(serde_json::json!({
            "code": 404, "reason": "NotFound", "message": "namespaces \"x\" not found",
            "details": {"name": "x", "kind": "namespaces"},
        }));
        assert!(namespace_ending(&gone));
        let forbidden = api_error(serde_json::json!({
            "code": 403, "reason": "Forbidden", "message": "pods is forbidden: User cannot create",
        }));
        assert!(!namespace_ending(&forbidden), "a plain 403 is a real error");
        let missing_pod = api_error(serde_json::json!({
            "code": 404, "reason": "NotFound", "message": "pods \"p\" not found",
            "details": {"name": "p", "kind": "pods"},
        }));
        assert!(!namespace_ending(&missing_pod));
    }
}
