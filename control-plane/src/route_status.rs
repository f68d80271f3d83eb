//! Route status written back as a Gateway API implementation must (GAMMA, routes attached to
//! Services): for each `parentRefs[]` entry of kind Service, a `status.parents[]` entry under
//! Weft's controller name with `Accepted` and `ResolvedRefs` conditions, each with its reason,
//! `observedGeneration` and `lastTransitionTime`. Entries of other controllers are kept.
//!
//! Only the replica that leads (see `leader.rs`) writes, checking it still leads before each
//! route, and only what differs from what the API server holds; a write is computed from the
//! route at the version the served policy holds, and names that resourceVersion.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use crate::metrics::Metrics;
use crate::policy::{Key, Kind, ParentRef, Spec};
use crate::policy_store::{PolicyState, Stored};
use crate::resource_store::{api_resource, decode};

/// How long a pass that failed waits before trying again (nothing else may change meanwhile).
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The `controllerName` Weft writes its status entries under.
pub const CONTROLLER_NAME: &str = "weft.io/mesh-controller";

/// Keeps the status of every route true while `leading` says so, until `stop` resolves: the
/// routes of the served state, and those the API server holds that Weft cannot read (told why,
/// rather than left showing what an older version was).
pub async fn keep_written(
    client: kube::Client,
    mut state: watch::Receiver<Arc<PolicyState>>,
    mut leading: watch::Receiver<bool>,
    metrics: Metrics,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    // Followed whether this replica leads or not, so a new leader starts from current objects.
    let (stored, mut stored_changed, _following) = stored_routes(&client);
    // What each route's status was last confirmed as, at which version of the route.
    let mut confirmed: HashMap<Key, (u64, Verdict)> = HashMap::new();
    loop {
        let lead = *leading.borrow_and_update();
        metrics.leader.set(i64::from(lead));
        let mut failed = false;
        if lead {
            let snapshot = state.borrow_and_update().clone();
            stored_changed.mark_unchanged();
            let unreadable: Vec<Pending> = unreadable(&stored, &snapshot).collect();
            let broken: HashSet<Key> = unreadable.iter().map(|p| p.key.clone()).collect();
            let served = snapshot
                .of_kind(Kind::HttpRoute)
                .chain(snapshot.of_kind(Kind::GrpcRoute))
                .filter(|route| !broken.contains(&route.resource.key()))
                .map(|route| Pending {
                    key: route.resource.key(),
                    version: route.resource_version,
                    verdict: verdict(&snapshot, route),
                    object: None,
                });
            let mut known = HashSet::new();
            for pending in served.chain(unreadable) {
                // Leadership may go mid-pass: the next leader writes from then on.
                if !*leading.borrow() {
                    break;
                }
                known.insert(pending.key.clone());
                let key = pending.key.clone();
                let outcome = tokio::select! {
                    outcome = reconcile(&client, pending, &mut confirmed, &metrics) => outcome,
                    () = &mut stop => return,
                };
                match outcome {
                    Ok(()) => {}
                    // The route changed since it was read: its change brings another pass.
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        tracing::debug!(%key, "route changed while its status was written");
                    }
                    Err(error) => {
                        failed = true;
                        tracing::warn!(%key, %error, "cannot write route status; retrying");
                    }
                }
            }
            confirmed.retain(|key, _| known.contains(key));
        } else {
            // Another replica writes meanwhile: nothing confirmed before holds.
            confirmed.clear();
        }
        tokio::select! {
            changed = state.changed(), if lead => if changed.is_err() { return },
            changed = leading.changed() => if changed.is_err() { return },
            Ok(()) = stored_changed.changed(), if lead => {}
            () = tokio::time::sleep(RETRY), if failed => {}
            () = &mut stop => return,
        }
    }
}

/// Each route kind's objects as the API server holds them.
type StoredRoutes = Vec<(Kind, Store<DynamicObject>)>;

/// A route's status to write: what Weft says of the route at `version`.
struct Pending {
    key: Key,
    version: u64,
    verdict: Verdict,
    /// The route as last read at `version`; read afresh when `None`.
    object: Option<DynamicObject>,
}

/// Every HTTPRoute and GRPCRoute as the API server holds it, readable or not; a receiver told
/// of each change; and the task following them, stopped when dropped. The watches retry on
/// their own (and wait while the Gateway API's CRDs are missing).
fn stored_routes(
    client: &kube::Client,
) -> (StoredRoutes, watch::Receiver<()>, AbortOnDropHandle<()>) {
    let mut stores = Vec::new();
    let mut streams = Vec::new();
    for kind in [Kind::HttpRoute, Kind::GrpcRoute] {
        let resource = api_resource(kind);
        let writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
        stores.push((kind, writer.as_reader()));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let changes = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            // Each object of a listing is not a change of its own: the listing's end is.
            .map(|event| {
                event.map(|event| {
                    matches!(
                        event,
                        watcher::Event::Apply(_)
                            | watcher::Event::Delete(_)
                            | watcher::Event::InitDone
                    )
                })
            });
        streams.push(changes.boxed());
    }
    let (changed, receiver) = watch::channel(());
    let mut events = futures_util::stream::select_all(streams);
    let task = tokio::spawn(async move {
        let mut failing = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(change) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("route status: following the stored routes again");
                    }
                    if change {
                        changed.send_replace(());
                    }
                }
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "route status: cannot follow the stored routes (are the Gateway API CRDs installed?); retrying");
                }
                Err(error) => {
                    tracing::debug!(%error, "route status: still cannot follow the stored routes")
                }
            }
        }
    });
    (stores, receiver, AbortOnDropHandle::new(task))
}

/// The stored routes Weft cannot read (and so does not serve), each not accepted with the
/// reason.
fn unreadable<'a>(
    stored: &'a [(Kind, Store<DynamicObject>)],
    snapshot: &'a PolicyState,
) -> impl Iterator<Item = Pending> + 'a {
    stored.iter().flat_map(move |(kind, store)| {
        store.state().into_iter().filter_map(move |object| {
            let key = Key::new(
                *kind,
                object.metadata.namespace.as_deref()?,
                object.metadata.name.as_deref()?,
            );
            let version: u64 = object.metadata.resource_version.as_deref()?.parse().ok()?;
            if snapshot
                .declared(&key)
                .is_some_and(|served| served.resource_version == version)
            {
                return None;
            }
            let reason = decode(*kind, (*object).clone()).err()?;
            // The store keeps serving what it last could read, rather than lose policy.
            let reason = match snapshot.declared(&key) {
                Some(served) => format!(
                    "{reason}; the version before it (resourceVersion {}) is still served",
                    served.resource_version
                ),
                None => format!("{reason}; not served"),
            };
            Some(Pending {
                key,
                version,
                verdict: unreadable_verdict(&object, reason),
                object: Some((*object).clone()),
            })
        })
    })
}

/// Writes one route's status if it differs from what the API server holds.
async fn reconcile(
    client: &kube::Client,
    pending: Pending,
    confirmed: &mut HashMap<Key, (u64, Verdict)>,
    metrics: &Metrics,
) -> Result<(), kube::Error> {
    let Pending {
        key,
        version,
        verdict,
        object,
    } = pending;
    if confirmed
        .get(&key)
        .is_some_and(|(was_at, was)| *was_at == version && *was == verdict)
    {
        return Ok(());
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &key.namespace, &api_resource(key.kind));
    let object = match object {
        Some(object) => object,
        None => match api.get_opt(&key.name).await? {
            Some(object) => object,
            None => return Ok(()),
        },
    };
    if object.metadata.resource_version != Some(version.to_string()) {
        // The served policy has not caught up with this version yet; it will, and this route's
        // status is computed again then, from the version it describes.
        return Ok(());
    }
    let existing = object.data["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let parents = parents(&object, &existing, &verdict);
    if parents != existing {
        let patch = json!({
            "metadata": {"resourceVersion": object.metadata.resource_version},
            "status": {"parents": parents},
        });
        let written = api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        metrics.route_status_writes.inc();
        // The write moved the route's version on; the served policy will show that version.
        if let Some(version) = written
            .metadata
            .resource_version
            .and_then(|v| v.parse().ok())
        {
            confirmed.insert(key, (version, verdict));
            return Ok(());
        }
    }
    confirmed.insert(key, (version, verdict));
    Ok(())
}

/// One condition as written: status, reason, message.
#[derive(Debug, Clone, PartialEq)]
struct Said {
    status: &'static str,
    reason: &'static str,
    message: String,
}

/// What the served policy says of a route: for each `parentRefs` entry (in order) whether
/// Weft takes the route there, and whether its backends resolve.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    accepted: Vec<Said>,
    resolved: Said,
}

fn verdict(state: &PolicyState, route: &Stored) -> Verdict {
    let resource = &route.resource;
    let parent_refs: &[ParentRef] = match &resource.spec {
        Spec::HttpRoute(spec) => &spec.parent_refs,
        Spec::GrpcRoute(spec) => &spec.parent_refs,
        _ => &[],
    };
    let unsupported = resource.unsupported();
    let accepted = parent_refs
        .iter()
        .map(|parent| {
            let service = Key::new(
                Kind::Service,
                parent.namespace.as_deref().unwrap_or(resource.namespace()),
                &parent.name,
            );
            match (no_match(state, &service, parent), &unsupported) {
                (Some(message), _) => Said {
                    status: "False",
                    reason: "NoMatchingParent",
                    message,
                },
                (None, Some((field, reason))) => Said {
                    status: "False",
                    reason: "UnsupportedValue",
                    message: format!("{field}: {reason}"),
                },
                (None, None) => Said {
                    status: "True",
                    reason: "Accepted",
                    message: "Weft routes this Service's traffic by this route".to_string(),
                },
            }
        })
        .collect();
    let missing: Vec<String> = resource
        .references()
        .into_iter()
        .filter(|(field, target)| {
            !field.starts_with("spec.parentRefs") && state.get(target).is_none()
        })
        .map(|(field, target)| format!("{field}: {target} does not exist"))
        .collect();
    let resolved = if missing.is_empty() {
        Said {
            status: "True",
            reason: "ResolvedRefs",
            message: "every backend exists".to_string(),
        }
    } else {
        Said {
            status: "False",
            reason: "BackendNotFound",
            message: missing.join("; "),
        }
    };
    Verdict { accepted, resolved }
}

/// What is said of a route Weft cannot read: not accepted at any parent, with the reason; its
/// references not checked.
fn unreadable_verdict(object: &DynamicObject, reason: String) -> Verdict {
    let parents = object.data["spec"]["parentRefs"]
        .as_array()
        .map_or(0, Vec::len);
    Verdict {
        accepted: vec![
            Said {
                status: "False",
                reason: "UnsupportedValue",
                message: reason,
            };
            parents
        ],
        resolved: Said {
            status: "Unknown",
            reason: "Pending",
            message: "not checked: the route is not accepted".to_string(),
        },
    }
}

/// Why `parent` names no port of Service `service` that Weft serves, if it does not.
fn no_match(state: &PolicyState, service: &Key, parent: &ParentRef) -> Option<String> {
    let named = format!("Service {}/{}", service.namespace, service.name);
    let Some(Spec::Service(spec)) = state.get(service).map(|s| &s.resource.spec) else {
        return Some(format!("{named} does not exist"));
    };
    if let Some(port) = parent.port
        && !spec.ports.iter().any(|p| p.port == port)
    {
        return Some(format!("{named} has no port {port}"));
    }
    if let Some(section) = &parent.section_name
        && !spec.ports.iter().any(|p| p.name.as_ref() == Some(section))
    {
        return Some(format!("{named} has no port named {section:?}"));
    }
    None
}

/// The `status.parents` the route should have: other controllers' entries as they are, then
/// Weft's, one per Service parent, keeping each condition's transition time while its status
/// holds.
fn parents(object: &DynamicObject, existing: &[Value], verdict: &Verdict) -> Vec<Value> {
    let generation = object.metadata.generation.unwrap_or(0);
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now())
        .to_string();
    let mut parents: Vec<Value> = existing
        .iter()
        .filter(|p| p["controllerName"] != CONTROLLER_NAME)
        .cloned()
        .collect();
    let refs = object.data["spec"]["parentRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, parent_ref) in refs.iter().enumerate() {
        if parent_ref["kind"]
            .as_str()
            .is_some_and(|kind| kind != "Service")
        {
            // A Gateway's: that Gateway's controller reports on it.
            continue;
        }
        // Validation admits Service parents only, so the verdict has one entry per parent.
        let accepted = verdict.accepted.get(i).cloned().unwrap_or_else(|| Said {
            status: "False",
            reason: "NoMatchingParent",
            message: "not a parent Weft knows".to_string(),
        });
        let previous = existing
            .iter()
            .find(|p| p["controllerName"] == CONTROLLER_NAME && p["parentRef"] == *parent_ref);
        let condition = |kind: &str, said: &Said| {
            let since = previous
                .and_then(|p| p["conditions"].as_array())
                .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
                .filter(|c| c["status"] == said.status)
                .map_or_else(|| json!(now), |c| c["lastTransitionTime"].clone());
            json!({
                "type": kind,
                "status": said.status,
                "reason": said.reason,
                "message": said.message,
                "observedGeneration": generation,
                "lastTransitionTime": since,
            })
        };
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                condition("Accepted", &accepted),
                condition("ResolvedRefs", &verdict.resolved),
            ],
        }));
    }
    parents
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weft_tests::fake_apiserver::FakeApiServer;

    use super::*;
    use crate::policy_store::followed;
    use crate::resource_store::Kubernetes;

    const SERVICE: &str = "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {selector: {app: api}, ports: [{port: 8080}]}\n";
    const CANARY: &str = "apiVersion: policy.weft.io/v1alpha1\nkind: Service\nmetadata: {name: canary, namespace: shop}\nspec: {selector: {app: canary}, ports: [{port: 8080}]}\n";
    const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: api, port: 8080}
  rules:
  - backendRefs: [{name: api, port: 8080}, {name: canary, port: 8080}]
"#;

    /// A replica: the Kubernetes store followed, and a status writer that leads or not.
    async fn replica(api: &FakeApiServer, lead: bool) -> (Metrics, watch::Sender<bool>) {
        let client = api.client().await;
        let store = followed(Arc::new(Kubernetes::connect(client.clone()).await.unwrap())).await;
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let (leading, receiver) = watch::channel(lead);
        tokio::spawn(keep_written(
            client,
            store.subscribe_state(),
            receiver,
            metrics.clone(),
            std::future::pending(),
        ));
        (metrics, leading)
    }

    /// Weft's conditions on the route's first parent, once they say `resolved`.
    async fn weft_status(api: &FakeApiServer, resolved: &str) -> Value {
        let routes: Api<DynamicObject> =
            Api::namespaced_with(api.client().await, "shop", &api_resource(Kind::HttpRoute));
        weft_tests::eventually("the route's status", Duration::from_secs(15), || async {
            let route = routes.get("split").await.ok()?;
            let parents = route.data["status"]["parents"].as_array()?.clone();
            let ours = parents
                .iter()
                .find(|p| p["controllerName"] == CONTROLLER_NAME)?
                .clone();
            (ours["conditions"][1]["status"] == resolved).then_some(json!({
                "all": parents,
                "ours": ours,
                "generation": route.metadata.generation,
            }))
        })
        .await
    }

    #[test]
    fn a_parent_port_that_does_not_exist_or_a_filter_weft_lacks_is_not_accepted() {
        let yaml = r#"
apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{name: http, port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs:
  - {kind: Service, name: api, sectionName: http}
  - {kind: Service, name: api, sectionName: grpc}
  - {kind: Service, name: api, port: 9090}
  rules:
  - filters: [{type: URLRewrite, urlRewrite: {hostname: elsewhere}}]
    backendRefs: [{name: api, port: 8080}]
"#;
        let mut state = PolicyState::default();
        for doc in serde_saphyr::from_multiple::<Value>(yaml).unwrap() {
            let resource = crate::policy::Resource::parse(&doc, "test").unwrap();
            state.resources.insert(
                resource.key(),
                Stored {
                    resource: Arc::new(resource),
                    resource_version: 1,
                },
            );
        }
        let route = state
            .get(&Key::new(Kind::HttpRoute, "shop", "split"))
            .unwrap();
        let verdict = verdict(&state, route);
        let said: Vec<(&str, &str)> = verdict
            .accepted
            .iter()
            .map(|s| (s.reason, s.message.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                (
                    "UnsupportedValue",
                    "spec.rules[0].filters[0].type: \"URLRewrite\" is not supported yet (supported: RequestHeaderModifier, ResponseHeaderModifier, RequestMirror)"
                ),
                (
                    "NoMatchingParent",
                    "Service shop/api has no port named \"grpc\""
                ),
                ("NoMatchingParent", "Service shop/api has no port 9090"),
            ]
        );
        assert_eq!(verdict.resolved.reason, "ResolvedRefs");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_route_weft_cannot_read_is_told_why_and_accepted_once_mended() {
        weft_tests::init();
        let api = FakeApiServer::start().await;
        api.kubectl_apply(SERVICE).await;
        api.kubectl_apply(CANARY).await;
        let (_leader, _lead) = replica(&api, true).await;
        api.kubectl_apply(ROUTE).await;
        weft_status(&api, "True").await;
        // kubectl writes past what Weft reads (no CRD schema checks a regular expression):
        // the status says so for the new generation, and that the one before is still served.
        let broken = ROUTE.replace(
            "  - backendRefs:",
            "  - matches: [{path: {type: RegularExpression, value: \"([\"}}]\n    backendRefs:",
        );
        api.kubectl_apply(&broken).await;
        let status = weft_status(&api, "Unknown").await;
        let accepted = &status["ours"]["conditions"][0];
        assert_eq!(accepted["status"], "False");
        assert_eq!(accepted["reason"], "UnsupportedValue");
        let message = accepted["message"].as_str().unwrap();
        assert!(
            message.contains("spec.rules[0].matches[0].path.value")
                && message.contains("is still served"),
            "{message}"
        );
        assert_eq!(accepted["observedGeneration"], status["generation"]);
        assert_eq!(status["ours"]["conditions"][1]["reason"], "Pending");
        // Mended: accepted again.
        api.kubectl_apply(ROUTE).await;
        let status = weft_status(&api, "True").await;
        assert_eq!(status["ours"]["conditions"][0]["reason"], "Accepted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_leader_alone_writes_each_service_parent_s_conditions() {
        weft_tests::init();
        let api = FakeApiServer::start().await;
        api.kubectl_apply(SERVICE).await;
        api.kubectl_apply(ROUTE).await;
        // Another controller's entry (a Gateway's, say), which Weft must keep.
        let theirs = json!({
            "parentRef": {"kind": "Gateway", "name": "public"},
            "controllerName": "example.com/gateway",
            "conditions": [],
        });
        let routes: Api<DynamicObject> =
            Api::namespaced_with(api.client().await, "shop", &api_resource(Kind::HttpRoute));
        routes
            .patch_status(
                "split",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"parents": [theirs]}})),
            )
            .await
            .unwrap();
        let (leader, _lead) = replica(&api, true).await;
        let (follower, _follow) = replica(&api, false).await;

        let status = weft_status(&api, "False").await;
        let ours = &status["ours"];
        // The other controller's entry stays as it was.
        assert_eq!(status["all"].as_array().unwrap().len(), 2, "{status}");
        assert_eq!(status["all"][0], theirs);
        assert_eq!(ours["parentRef"]["name"], "api");
        let accepted = &ours["conditions"][0];
        assert_eq!(accepted["type"], "Accepted");
        assert_eq!(accepted["status"], "True");
        assert_eq!(accepted["reason"], "Accepted");
        assert_eq!(accepted["observedGeneration"], status["generation"]);
        let resolved = &ours["conditions"][1];
        assert_eq!(resolved["type"], "ResolvedRefs");
        assert_eq!(resolved["reason"], "BackendNotFound");
        assert!(
            resolved["message"]
                .as_str()
                .unwrap()
                .contains("spec.rules[0].backendRefs[1]: Service shop/canary does not exist"),
            "{resolved}"
        );

        // The missing backend appears: ResolvedRefs turns True; Accepted keeps its time (a
        // second later, so a time written anew would differ).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        api.kubectl_apply(CANARY).await;
        let status = weft_status(&api, "True").await;
        let ours = &status["ours"];
        assert_eq!(ours["conditions"][1]["reason"], "ResolvedRefs");
        assert_eq!(
            ours["conditions"][0]["lastTransitionTime"],
            accepted["lastTransitionTime"]
        );
        assert!(leader.route_status_writes.get() >= 2);
        assert_eq!(leader.leader.get(), 1);
        assert_eq!(
            follower.route_status_writes.get(),
            0,
            "only the leader writes"
        );
        assert_eq!(follower.leader.get(), 0);
    }
}
