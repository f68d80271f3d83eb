//! One destination's watch: snapshots in, the destination as a domain value out.

use std::sync::Arc;

use tokio::sync::watch;
use weft_api::discovery::{OutboundSnapshot, WatchOutboundRequest};

use super::{IDLE_CHECK, IDLE_TIMEOUT, Inner, MIN_BACKOFF, Resolved, Watch};
use crate::destination::Destination;

impl Inner {
    /// Follows `destination` until drained, idle, or refused for good.
    pub(super) async fn run(&self, destination: &str, watch: &Watch, tx: watch::Sender<Resolved>) {
        let mut backoff = MIN_BACKOFF;
        if !self.certified().await {
            return;
        }
        loop {
            let request = WatchOutboundRequest {
                destination: destination.to_string(),
            };
            match self.grpc.clone().watch_outbound(request).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    let mut idle_check = tokio::time::interval(IDLE_CHECK);
                    loop {
                        tokio::select! {
                            message = stream.message() => match message {
                                Ok(Some(snapshot)) => {
                                    backoff = MIN_BACKOFF;
                                    self.apply(destination, &snapshot, &tx);
                                }
                                Ok(None) => break,
                                Err(status) => {
                                    tracing::debug!(%destination, code = ?status.code(), message = status.message(), "discovery stream ended");
                                    break;
                                }
                            },
                            _ = idle_check.tick() => if watch.last_used.lock().elapsed() > IDLE_TIMEOUT {
                                tracing::debug!(%destination, "closing idle discovery watch");
                                return;
                            },
                            () = self.drain.signaled() => return,
                        }
                    }
                }
                Err(status) if status.code() == tonic::Code::InvalidArgument => {
                    // The control plane will never answer this destination: it is outside the
                    // mesh, for good; the watch ends, and the name is not asked again for a while.
                    tracing::debug!(%destination, message = status.message(), "destination refused by discovery");
                    self.refuse(destination);
                    tx.send_replace(Resolved::NotFound);
                    return;
                }
                Err(status) => {
                    tracing::debug!(%destination, code = ?status.code(), message = status.message(), "cannot watch destination");
                }
            }
            // Unused destinations go even while the control plane is away.
            if watch.last_used.lock().elapsed() > IDLE_TIMEOUT || !self.back_off(&mut backoff).await
            {
                return;
            }
        }
    }

    /// Turns a snapshot into the destination's new value, or rejects it (keeping the last).
    fn apply(&self, destination: &str, snapshot: &OutboundSnapshot, tx: &watch::Sender<Resolved>) {
        let outcome = if snapshot.found {
            Destination::compile(snapshot, self.max_endpoints)
                .map(|compiled| Resolved::Found(Arc::new(compiled)))
        } else {
            Ok(Resolved::NotFound)
        };
        let error = match outcome {
            Ok(resolved) => {
                tx.send_replace(resolved);
                self.metrics.discovery_update(true);
                tracing::debug!(%destination, version = %snapshot.version, "applied discovery snapshot");
                String::new()
            }
            Err(error) => {
                self.metrics.discovery_update(false);
                tracing::warn!(%destination, version = %snapshot.version, %error, "rejected discovery snapshot; keeping the last one");
                error.to_string()
            }
        };
        self.report(destination, &snapshot.version, error);
    }
}
