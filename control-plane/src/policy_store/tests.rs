use super::*;
use crate::policy::Resource;
use crate::resource_store::{Embedded, ResourceStore, WriteError};
use crate::store::Store;

fn load(store: Store) -> Result<PolicyStore, StoreError> {
    PolicyStore::load(Arc::new(Embedded::open(store)?))
}

fn store() -> (tempfile::TempDir, PolicyStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.redb")).unwrap();
    (dir, load(store).unwrap())
}

fn assert_conflict(err: &ChangeError, stored: u64, sent: u64) {
    assert!(
        matches!(
            err,
            ChangeError::Write(WriteError::Conflict { stored: s, sent: t, .. }) if *s == stored && *t == sent
        ),
        "{err}"
    );
}

fn parse(yaml: &str) -> Vec<Resource> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).unwrap();
    docs.iter()
        .enumerate()
        .map(|(i, doc)| Resource::parse(doc, &format!("document {}", i + 1)).unwrap())
        .collect()
}

const SERVICE: &str = r#"
apiVersion: policy.weft.io/v1alpha1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{port: 8080}]
"#;

const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-split, namespace: shop}
spec:
  parentRefs: [{name: api, kind: Service, port: 8080}]
  rules:
  - backendRefs: [{name: api, port: 8080, weight: 90}]
"#;

#[test]
fn apply_creates_then_leaves_unchanged_then_configures() {
    let (_dir, store) = store();
    let applied = store.apply(parse(SERVICE), false).unwrap();
    assert_eq!(applied[0].action, Action::Created);
    assert_eq!(applied[0].resource_version, 1);
    let again = store.apply(parse(SERVICE), false).unwrap();
    assert_eq!(again[0].action, Action::Unchanged);
    assert_eq!(store.state().revision, 1);
    let changed = store
        .apply(parse(&SERVICE.replace("8080", "9090")), false)
        .unwrap();
    assert_eq!(changed[0].action, Action::Configured);
    assert_eq!(changed[0].resource_version, 2);
}

#[test]
fn creation_timestamp_is_set_once_by_the_store() {
    let (_dir, store) = store();
    let sent = SERVICE.replace(
        "namespace: shop}",
        "namespace: shop, creationTimestamp: '1999-01-01T00:00:00Z'}",
    );
    store.apply(parse(&sent), false).unwrap();
    let key = Key::new(Kind::Service, "shop", "api");
    let stored_timestamp = || {
        store
            .state()
            .get(&key)
            .unwrap()
            .resource
            .meta
            .creation_timestamp
            .clone()
    };
    let created = stored_timestamp().expect("set on create");
    assert_ne!(created, "1999-01-01T00:00:00Z", "a sent value is ignored");
    assert!(humantime::parse_rfc3339(&created).is_ok(), "{created}");
    // Re-applying the same manifest (with no timestamp) is no change; a real change keeps it.
    let again = store.apply(parse(SERVICE), false).unwrap();
    assert_eq!(again[0].action, Action::Unchanged);
    store
        .apply(parse(&SERVICE.replace("8080", "9090")), false)
        .unwrap();
    assert_eq!(stored_timestamp().as_deref(), Some(created.as_str()));
}

#[test]
fn everything_survives_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = load(Store::open(&path).unwrap()).unwrap();
        store
            .apply(parse(&format!("{SERVICE}---{ROUTE}")), false)
            .unwrap();
    }
    let store = load(Store::open(&path).unwrap()).unwrap();
    let state = store.state();
    assert_eq!(state.revision, 1);
    assert_eq!(state.resources.len(), 2);
    // Re-applying what was loaded changes nothing.
    let again = store
        .apply(parse(&format!("{SERVICE}---{ROUTE}")), false)
        .unwrap();
    assert!(
        again.iter().all(|a| a.action == Action::Unchanged),
        "{again:?}"
    );
}

#[test]
fn a_route_to_a_missing_service_is_refused_and_nothing_changes() {
    let (_dir, store) = store();
    store.apply(parse(SERVICE), false).unwrap();
    let broken = ROUTE.replace(
        "[{name: api, port: 8080, weight: 90}]",
        "[{name: nope, port: 8080}]",
    );
    // One valid and one invalid resource: neither is stored.
    let other = SERVICE.replace("name: api,", "name: other,");
    let err = store
        .apply(parse(&format!("{other}---{broken}")), false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "HTTPRoute shop/api-split: spec.rules[0].backendRefs[0]: Service shop/nope does not exist"
    );
    let state = store.state();
    assert_eq!(state.revision, 1);
    assert!(
        state
            .get(&Key::new(Kind::Service, "shop", "other"))
            .is_none()
    );
}

#[test]
fn a_stale_resource_version_is_a_conflict() {
    let (_dir, store) = store();
    store.apply(parse(SERVICE), false).unwrap();
    store
        .apply(parse(&SERVICE.replace("8080", "9090")), false)
        .unwrap();
    let stale = SERVICE.replace(
        "namespace: shop}",
        "namespace: shop, resourceVersion: \"1\"}",
    );
    let err = store.apply(parse(&stale), false).unwrap_err();
    assert_conflict(&err, 2, 1);
    let current = SERVICE.replace(
        "namespace: shop}",
        "namespace: shop, resourceVersion: \"2\"}",
    );
    assert_eq!(
        store.apply(parse(&current), false).unwrap()[0].action,
        Action::Configured
    );
}

#[test]
fn delete_checks_existence_and_version() {
    let (_dir, store) = store();
    store.apply(parse(SERVICE), false).unwrap();
    let key = Key::new(Kind::Service, "shop", "api");
    assert!(matches!(
        store.delete(&key, Some(7)),
        Err(ChangeError::Write(WriteError::Conflict { .. }))
    ));
    assert_eq!(store.delete(&key, Some(1)).unwrap(), 2);
    assert!(matches!(
        store.delete(&key, None),
        Err(ChangeError::Write(WriteError::NotFound(_)))
    ));
}

#[test]
fn dry_run_stores_nothing() {
    let (_dir, store) = store();
    let applied = store.apply(parse(SERVICE), true).unwrap();
    assert_eq!(applied[0].action, Action::Created);
    assert_eq!(store.state().resources.len(), 0);
}

#[test]
fn watch_events_resume_from_a_revision() {
    let (_dir, store) = store();
    store.apply(parse(SERVICE), false).unwrap();
    store
        .apply(parse(&SERVICE.replace("8080", "9090")), false)
        .unwrap();
    let events = store.watch(1).unwrap().backlog;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].revision, 2);
}

#[test]
fn a_stored_record_that_no_longer_parses_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let raw = Store::open(&dir.path().join("store.redb")).unwrap();
    for bad in [
        b"{not json".to_vec(),
        br#"{"apiVersion": "v1", "kind": "Service"}"#.to_vec(),
    ] {
        raw.commit_resources(1, &[("Service/shop/api".to_string(), bad)], &[])
            .unwrap();
        let error = load(raw.clone()).unwrap_err().to_string();
        assert!(error.contains("Service/shop/api"), "{error}");
    }
}

#[test]
fn a_change_made_by_another_writer_meanwhile_is_a_conflict_then_seen() {
    // Two control-plane replicas on one backend: each checks its writes against the version
    // it last saw, so the slower one is refused instead of undoing the other's change.
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn ResourceStore> =
        Arc::new(Embedded::open(Store::open(&dir.path().join("store.redb")).unwrap()).unwrap());
    let first = PolicyStore::load(backend.clone()).unwrap();
    first.apply(parse(SERVICE), false).unwrap();
    let second = PolicyStore::load(backend.clone()).unwrap();
    second
        .apply(parse(&SERVICE.replace("8080", "9090")), false)
        .unwrap();
    let err = first
        .apply(parse(&SERVICE.replace("8080", "7070")), false)
        .unwrap_err();
    assert_conflict(&err, 2, 1);
    let key = Key::new(Kind::Service, "shop", "api");
    let kept = backend.get(&key).unwrap().unwrap();
    assert_eq!(kept.resource_version, 2);
    assert_eq!(
        kept.resource.spec,
        parse(&SERVICE.replace("8080", "9090"))[0].spec
    );
    // The conflict showed the slower writer the change: it now serves it.
    assert_eq!(first.state().get(&key).unwrap().resource_version, 2);
    // A delete from a stale view is refused the same way, and shows the change too.
    second
        .apply(parse(&SERVICE.replace("8080", "6060")), false)
        .unwrap();
    assert!(matches!(
        first.delete(&key, None),
        Err(ChangeError::Write(WriteError::Conflict {
            stored: 3,
            sent: 2,
            ..
        }))
    ));
    assert!(backend.get(&key).unwrap().is_some(), "not deleted");
    // A write checked against what it now sees goes through.
    let current = SERVICE.replace(
        "namespace: shop}",
        "namespace: shop, resourceVersion: \"3\"}",
    );
    let applied = first
        .apply(parse(&current.replace("8080", "7070")), false)
        .unwrap();
    assert_eq!(applied[0].resource_version, 4);
}

/// A backend's stream may announce a change after this store has applied a newer one itself:
/// the served state keeps the newer, and a deletion is not undone by its resource's late
/// creation.
#[test]
fn late_announcements_never_undo_newer_changes() {
    let service = crate::resource_store::conformance::service("shop", "api", 8080);
    let at = |version: u64| Stored {
        resource: Arc::new(service.clone()),
        resource_version: version,
    };
    let mut state = Arc::new(PolicyState::default());
    assert!(observe(&mut state, false, at(3), 3));
    assert!(
        !observe(&mut state, false, at(2), 2),
        "older than what is served"
    );
    assert!(observe(&mut state, true, at(3), 4));
    assert!(state.resources.is_empty());
    assert!(
        !observe(&mut state, false, at(3), 3),
        "the creation announced after the delete it preceded"
    );
    assert!(state.resources.is_empty());
    assert!(observe(&mut state, false, at(5), 5), "created again");
    assert_eq!(state.get(&service.key()).unwrap().resource_version, 5);
}

#[test]
fn the_cluster_view_is_pending_until_served_and_served_beside_what_is_declared() {
    let (_dir, store) = store();
    store.apply(parse(SERVICE), false).unwrap();
    store.expect_cluster();
    assert!(store.state().cluster_pending);
    // An empty cluster is a view too: serving it ends the wait.
    assert!(store.set_cluster(ClusterState::default()));
    assert!(!store.state().cluster_pending);
    assert!(
        !store.set_cluster(ClusterState::default()),
        "the same view again"
    );

    let mut cluster = crate::cluster::translate_yaml(crate::cluster::TEST_CLUSTER);
    cluster.generation = 1;
    assert!(store.set_cluster(cluster));
    let state = store.state();
    // The declared Service keeps its name; the cluster's others are served beside it, never
    // shown or changed as declared resources.
    let api = Key::new(Kind::Service, "shop", "api");
    assert_eq!(
        state.get(&api).unwrap().resource_version,
        state.declared(&api).unwrap().resource_version
    );
    let db = Key::new(Kind::Service, "shop", "db");
    assert!(state.get(&db).is_some());
    assert!(state.declared(&db).is_none());
    let served: Vec<String> = state
        .of_kind(Kind::Service)
        .map(|s| s.resource.meta.name.clone())
        .collect();
    assert_eq!(served, ["api", "db"]);
    assert!(matches!(
        store.delete(&db, None),
        Err(ChangeError::Write(WriteError::NotFound(_)))
    ));
    assert_eq!(
        state.served_version_string(),
        format!("{}.1", state.revision)
    );
}
