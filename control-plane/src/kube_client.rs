//! The one way weft-control and weftctl reach a Kubernetes API server.

use std::path::Path;

/// Why the API server cannot be reached.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KubeError(pub String);

/// The configuration a `--kubeconfig` file gives (its current context).
pub async fn from_kubeconfig(path: &Path) -> Result<kube::Config, KubeError> {
    let file = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| KubeError(format!("--kubeconfig {}: {e}", path.display())))?;
    kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| KubeError(format!("--kubeconfig {}: {e}", path.display())))
}

/// A client for `config`.
pub fn client(config: kube::Config) -> Result<kube::Client, KubeError> {
    kube::Client::try_from(config).map_err(|e| KubeError(format!("Kubernetes client: {e}")))
}

/// The cluster's client: from `kubeconfig` when given, else the pod's own ServiceAccount when
/// running in a cluster; `None` outside one.
pub async fn cluster_client(kubeconfig: Option<&Path>) -> Result<Option<kube::Client>, KubeError> {
    let config = match kubeconfig {
        Some(path) => from_kubeconfig(path).await?,
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => kube::Config::incluster()
            .map_err(|e| KubeError(format!("in-cluster configuration: {e}")))?,
        None => return Ok(None),
    };
    client(config).map(Some)
}
