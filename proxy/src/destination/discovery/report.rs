//! Telling the control plane which snapshot versions the proxy applied or rejected. One task
//! sends them, one at a time, so the control plane takes them in the order they were applied:
//! reports sent side by side could arrive swapped and leave an older version on record, which
//! holds up an anchor rotation until the next snapshot. Only the latest status of a resource
//! waits to be sent, so what is queued stays bounded by the resources watched.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tonic::transport::Channel;
use weft_api::discovery::ConfigStatus;
use weft_api::discovery::discovery_client::DiscoveryClient as DiscoveryGrpc;
use weft_telemetry::Drain;

/// How long one report may take; a control plane that does not answer holds up the rest no
/// longer than this.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Statuses not yet sent, the latest per resource.
#[derive(Debug, Default)]
pub(super) struct Reports {
    pending: Mutex<HashMap<String, ConfigStatus>>,
    queued: Notify,
}

impl Reports {
    /// Queues `status`, replacing an unsent one of its resource.
    pub(super) fn push(&self, status: ConfigStatus) {
        self.pending.lock().insert(status.resource.clone(), status);
        self.queued.notify_one();
    }

    /// Sends what is queued, in order, until drained.
    pub(super) async fn send(&self, grpc: DiscoveryGrpc<Channel>, drain: Drain) {
        loop {
            tokio::select! {
                () = self.queued.notified() => {}
                () = drain.signaled() => return,
            }
            let queued: Vec<ConfigStatus> = std::mem::take(&mut *self.pending.lock())
                .into_values()
                .collect();
            let send_queued = async {
                for status in queued {
                    let mut grpc = grpc.clone();
                    match tokio::time::timeout(REPORT_TIMEOUT, grpc.report_status(status)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(status)) => {
                            tracing::debug!(code = ?status.code(), "cannot report config status");
                        }
                        Err(_) => tracing::debug!("config status report timed out"),
                    }
                }
            };
            // A report in flight must not hold up the proxy's shutdown.
            tokio::select! {
                () = send_queued => {}
                () = drain.signaled() => return,
            }
        }
    }
}
