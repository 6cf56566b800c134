//! The plugin's connection as the kubeconfig's user, and its errors in one line; what `list` and
//! `describe` read is `trainjob_operator::view::fetch`, shared with the dashboard.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use trainjob_operator::view::fetch::FetchError;

use super::{Cli, Failure};

/// A client as the kubeconfig's user, and the context's namespace.
pub async fn connect(cli: &Cli) -> Result<(Client, String), Failure> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| format!("reading --kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| {
        format!("no usable kubeconfig ({e}): pass --kubeconfig, set KUBECONFIG, or check --context")
    })?;
    let ns = config.default_namespace.clone();
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| format!("cannot use the cluster at {url}: {e}"))?;
    Ok((client, ns))
}

/// One line for an API error, naming what was done and what to check.
pub fn said(e: kube::Error, doing: &str) -> Failure {
    FetchError::new(e, doing).to_string()
}

/// A failed read, in one line.
pub fn fail(e: FetchError) -> Failure {
    e.to_string()
}
