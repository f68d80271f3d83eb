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
