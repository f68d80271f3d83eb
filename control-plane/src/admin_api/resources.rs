//! Policy resources: apply, get, list, delete, watch.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tonic::Status;
use weft_api::admin::{
    ApplyRequest, ApplyResponse, ApplyResult, DeleteRequest, DeleteResponse, GetRequest,
    ListRequest, ListResponse, Resource as ResourceMessage, WatchEvent, WatchRequest, watch_event,
};

use super::WatchStream;
use crate::policy::{DEFAULT_NAMESPACE, Key, Kind, Resource};
use crate::policy_store::{Action, ChangeError, Event, PolicyStore, Stored};
use crate::resource_store::{Watch, WatchError, WriteError};

/// More manifests than this in one apply is refused (a typo'd directory, most likely).
const MAX_MANIFESTS: usize = 1000;

/// The resource half of the admin API.
#[derive(Debug, Clone)]
pub struct ResourceAdmin {
    store: Arc<PolicyStore>,
}

impl ResourceAdmin {
    /// Serves `store`.
    pub fn new(store: Arc<PolicyStore>) -> Self {
        Self { store }
    }

    pub async fn apply(&self, req: ApplyRequest) -> Result<ApplyResponse, Status> {
        if req.manifests_json.len() > MAX_MANIFESTS {
            return Err(Status::invalid_argument(format!(
                "{} manifests in one apply; at most {MAX_MANIFESTS}",
                req.manifests_json.len()
            )));
        }
        let mut resources = Vec::with_capacity(req.manifests_json.len());
        let mut warnings = Vec::new();
        for (i, json) in req.manifests_json.iter().enumerate() {
            let position = format!("document {}", i + 1);
            let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
                Status::invalid_argument(format!("{position}: not a JSON document: {e}"))
            })?;
            let parsed = Resource::parse_reporting(&value, &position)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            warnings.extend(parsed.warnings);
            resources.push(parsed.resource);
        }
        let store = self.store.clone();
        let dry_run = req.dry_run;
        let applied = tokio::task::spawn_blocking(move || store.apply(resources, dry_run))
            .await
            .map_err(|e| Status::internal(format!("apply task failed: {e}")))?
            .map_err(change_status)?;
        Ok(ApplyResponse {
            results: applied
                .into_iter()
                .map(|a| ApplyResult {
                    kind: a.key.kind.to_string(),
                    namespace: a.key.namespace,
                    name: a.key.name,
                    resource_version: a.resource_version,
                    action: match a.action {
                        Action::Created => "created",
                        Action::Configured => "configured",
                        Action::Unchanged => "unchanged",
                    }
                    .to_string(),
                })
                .collect(),
            warnings,
        })
    }

    pub fn get(&self, req: GetRequest) -> Result<ResourceMessage, Status> {
        let key = Key::new(kind(&req.kind)?, namespace(&req.namespace), &req.name);
        self.store
            .state()
            .declared(&key)
            .map(to_message)
            .ok_or_else(|| Status::not_found(format!("{key} does not exist")))
    }

    pub fn list(&self, req: ListRequest) -> Result<ListResponse, Status> {
        let kind = kind(&req.kind)?;
        let state = self.store.state();
        let resources = state
            .declared_of_kind(kind)
            .filter(|s| req.namespace.is_empty() || s.resource.namespace() == req.namespace)
            .map(to_message)
            .collect();
        Ok(ListResponse {
            resources,
            revision: state.revision,
        })
    }

    pub async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse, Status> {
        let key = Key::new(kind(&req.kind)?, namespace(&req.namespace), &req.name);
        let expected = (req.resource_version != 0).then_some(req.resource_version);
        let store = self.store.clone();
        let revision = tokio::task::spawn_blocking(move || store.delete(&key, expected))
            .await
            .map_err(|e| Status::internal(format!("delete task failed: {e}")))?
            .map_err(change_status)?;
        Ok(DeleteResponse { revision })
    }

    pub fn watch(&self, req: WatchRequest) -> Result<WatchStream, Status> {
        let kind = (!req.kind.is_empty())
            .then(|| kind(&req.kind))
            .transpose()?;
        let namespace = req.namespace.clone();
        let wanted = move |event: &Event| {
            kind.is_none_or(|k| event.stored.resource.kind == k)
                && (namespace.is_empty() || event.stored.resource.namespace() == namespace)
        };
        let Watch {
            backlog,
            live: mut receiver,
        } = self
            .store
            .watch(req.since_revision)
            .map_err(|error| match error {
                WatchError::Gone { since, .. } => Status::out_of_range(format!(
                    "revision {since} is older than the event log; list again and watch from its revision"
                )),
                WatchError::Store(error) => Status::internal(error.to_string()),
            })?;
        // The backend announces a change as it commits it, a moment before the served state
        // shows it: a watcher that reads back what it was told of must find it.
        let mut state = self.store.subscribe_state();
        let stream = async_stream(move |tx| async move {
            for event in backlog.into_iter().filter(|e| wanted(e)) {
                if tx.send(Ok(to_event(&event))).await.is_err() {
                    return;
                }
            }
            loop {
                let received = tokio::select! {
                    received = receiver.recv() => received,
                    // A client gone while no matching event comes must not keep the task.
                    () = tx.closed() => return,
                };
                match received {
                    Ok(event) if wanted(&event) => {
                        let caught_up = state.wait_for(|s| s.revision >= event.revision);
                        // Bounded: a state that never catches up (another writer's change,
                        // seen at the next conflict) must not hold the watch.
                        let _ = tokio::time::timeout(STATE_CATCH_UP, caught_up).await;
                        if tx.send(Ok(to_event(&event))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(
                                "watch fell behind; list again and watch from its revision",
                            )))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(stream)
    }
}

/// How long a watch waits for the served state to show a change before announcing it.
const STATE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(1);

/// A stream fed by a task, ending when the task does or the client goes away.
fn async_stream<F, Fut>(produce: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<WatchEvent, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn kind(name: &str) -> Result<Kind, Status> {
    Kind::from_cli(name)
        .or_else(|| Kind::from_manifest(name))
        .ok_or_else(|| Status::invalid_argument(format!("kind: unknown kind {name:?}")))
}

fn namespace(namespace: &str) -> &str {
    if namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        namespace
    }
}

fn change_status(error: ChangeError) -> Status {
    match error {
        ChangeError::Invalid(e) => Status::invalid_argument(e.to_string()),
        ChangeError::Write(WriteError::Conflict { .. }) => Status::aborted(error.to_string()),
        ChangeError::Write(WriteError::NotFound(_)) => Status::not_found(error.to_string()),
        ChangeError::Write(WriteError::Store(e)) => Status::internal(e.to_string()),
    }
}

fn to_message(stored: &Stored) -> ResourceMessage {
    let resource = &stored.resource;
    ResourceMessage {
        api_version: resource.kind.api_version().to_string(),
        kind: resource.kind.to_string(),
        namespace: resource.namespace().to_string(),
        name: resource.meta.name.clone(),
        resource_version: stored.resource_version,
        manifest_json: resource.to_json(stored.resource_version).to_string(),
    }
}

fn to_event(event: &Event) -> WatchEvent {
    WatchEvent {
        r#type: if event.deleted {
            watch_event::Type::Deleted
        } else {
            watch_event::Type::Applied
        } as i32,
        resource: Some(to_message(&event.stored)),
        revision: event.revision,
    }
}
