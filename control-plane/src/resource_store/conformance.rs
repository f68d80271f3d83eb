//! The contract of [`ResourceStore`], as checks every backend runs on a fresh store of its own:
//! `run(&|| (backend, guard))`, where the guard keeps whatever the backend needs alive (a
//! temporary directory, a server process) until the check is done.

use std::any::Any;

use std::time::{Duration, Instant};

use tokio::sync::broadcast::{self, error::TryRecvError};

use super::{Event, Expected, ResourceStore, Watch, WatchError, WriteError};
use crate::policy::{Key, Kind, Resource};

type Make<'a> = &'a dyn Fn() -> (Box<dyn ResourceStore>, Box<dyn Any>);

type Check = fn(&dyn ResourceStore);

const CHECKS: &[(&str, Check)] = &[
    ("a new store holds nothing", starts_empty),
    ("a created resource is read back", creates_and_reads_back),
    ("versions guard every write", versions_guard_writes),
    ("a write of several is all or nothing", batches_are_atomic),
    ("a delete names what it expects", deletes_are_guarded),
    (
        "a watch replays from a revision, then follows",
        watches_replay_then_follow,
    ),
    ("a watch from now sees only what comes", watches_from_now),
];

/// Runs every check, each on a store of its own; a failure names the check.
pub(crate) fn run(make: Make<'_>) {
    for (name, check) in CHECKS {
        let (store, _guard) = make();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&*store)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("conformance check {name:?} failed: {message}");
        }
    }
}

/// A Weft Service manifest, the simplest resource there is.
pub(crate) fn service(namespace: &str, name: &str, port: u16) -> Resource {
    let manifest = serde_json::json!({
        "apiVersion": "policy.weft.io/v1alpha1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [{"port": port}]},
    });
    Resource::parse(&manifest, "test manifest").expect("a valid Service")
}

fn key(name: &str) -> Key {
    Key::new(Kind::Service, "shop", name)
}

fn starts_empty(store: &dyn ResourceStore) {
    assert!(store.list().unwrap().resources.is_empty());
    assert!(store.get(&key("api")).unwrap().is_none());
}

fn creates_and_reads_back(store: &dyn ResourceStore) {
    let before = store.list().unwrap().revision;
    let written = store
        .apply(vec![(service("shop", "api", 8080), Expected::Absent)])
        .unwrap();
    assert_eq!(written.stored.len(), 1);
    let version = written.stored[0].resource_version;
    assert!(written.revision > before, "a write moves the revision on");
    let got = store.get(&key("api")).unwrap().expect("the resource");
    assert_eq!(got.resource_version, version);
    assert_same(&got.resource, &service("shop", "api", 8080));
    let listing = store.list().unwrap();
    assert!(listing.revision >= written.revision);
    assert_eq!(listing.resources.len(), 1);
    assert_eq!(listing.resources[0].resource_version, version);
}

fn versions_guard_writes(store: &dyn ResourceStore) {
    let first = store
        .apply(vec![(service("shop", "api", 8080), Expected::Absent)])
        .unwrap()
        .stored[0]
        .resource_version;
    let again = store.apply(vec![(service("shop", "api", 9090), Expected::Absent)]);
    assert!(
        matches!(again, Err(WriteError::Conflict { stored, sent: 0, .. }) if stored == first),
        "creating what exists: {again:?}"
    );
    let stale = store.apply(vec![(
        service("shop", "api", 9090),
        Expected::Version(first + 1000),
    )]);
    assert!(
        matches!(stale, Err(WriteError::Conflict { .. })),
        "{stale:?}"
    );
    let missing = store.apply(vec![(service("shop", "web", 80), Expected::Version(first))]);
    assert!(
        matches!(missing, Err(WriteError::Conflict { stored: 0, .. })),
        "updating what does not exist: {missing:?}"
    );
    assert_eq!(
        store.get(&key("api")).unwrap().unwrap().resource_version,
        first,
        "a refused write leaves the resource as it was"
    );
    let second = store
        .apply(vec![(
            service("shop", "api", 9090),
            Expected::Version(first),
        )])
        .unwrap()
        .stored[0]
        .resource_version;
    assert!(second > first, "versions only go up");
    let blind = store
        .apply(vec![(service("shop", "api", 7070), Expected::Any)])
        .unwrap()
        .stored[0]
        .resource_version;
    assert!(blind > second);
    assert_same(
        &store.get(&key("api")).unwrap().unwrap().resource,
        &service("shop", "api", 7070),
    );
}

fn batches_are_atomic(store: &dyn ResourceStore) {
    store
        .apply(vec![(service("shop", "api", 8080), Expected::Absent)])
        .unwrap();
    let refused = store.apply(vec![
        (service("shop", "web", 80), Expected::Absent),
        (service("shop", "api", 9090), Expected::Absent),
    ]);
    assert!(matches!(refused, Err(WriteError::Conflict { .. })));
    assert!(
        store.get(&key("web")).unwrap().is_none(),
        "nothing of a refused batch is written"
    );
    let written = store
        .apply(vec![
            (service("shop", "web", 80), Expected::Absent),
            (service("shop", "db", 5432), Expected::Absent),
        ])
        .unwrap();
    assert_eq!(written.stored.len(), 2);
    assert_eq!(store.list().unwrap().resources.len(), 3);
}

fn deletes_are_guarded(store: &dyn ResourceStore) {
    assert!(matches!(
        store.delete(&key("api"), Expected::Any),
        Err(WriteError::NotFound(_))
    ));
    let version = store
        .apply(vec![(service("shop", "api", 8080), Expected::Absent)])
        .unwrap()
        .stored[0]
        .resource_version;
    let stale = store.delete(&key("api"), Expected::Version(version + 1000));
    assert!(
        matches!(stale, Err(WriteError::Conflict { .. })),
        "{stale:?}"
    );
    assert!(store.get(&key("api")).unwrap().is_some());
    let revision = store
        .delete(&key("api"), Expected::Version(version))
        .unwrap();
    assert!(revision > version);
    assert!(store.get(&key("api")).unwrap().is_none());
    assert!(store.list().unwrap().resources.is_empty());
}

fn watches_replay_then_follow(store: &dyn ResourceStore) {
    // From a revision something was written at: 0 would mean "from now".
    let start = store
        .apply(vec![(service("shop", "db", 5432), Expected::Absent)])
        .unwrap()
        .revision;
    let created = store
        .apply(vec![(service("shop", "api", 8080), Expected::Absent)])
        .unwrap();
    let last = store
        .apply(vec![(service("shop", "web", 80), Expected::Absent)])
        .unwrap()
        .revision;
    let (mut watch, since) = match store.watch(start) {
        Ok(watch) => (watch, start),
        // A backend may keep no history at all; it must then say so, not return nothing.
        Err(WatchError::Gone { .. }) => (store.watch(created.revision).unwrap(), created.revision),
        Err(error) => panic!("{error}"),
    };
    assert!(
        watch
            .backlog
            .windows(2)
            .all(|w| w[0].revision <= w[1].revision),
        "the backlog is in order"
    );
    let replayed = replay(&mut watch, since, last);
    let names: Vec<_> = replayed
        .iter()
        .map(|e| e.stored.resource.meta.name.as_str())
        .collect();
    assert!(!names.contains(&"db"), "{names:?}");
    assert!(names.ends_with(&["web"]), "{names:?}");
    if since == start {
        assert_eq!(names, ["api", "web"]);
    }
    let mut from_created = store.watch(created.revision).unwrap();
    let replayed = replay(&mut from_created, created.revision, last);
    assert_eq!(replayed.len(), 1, "only what came after: {replayed:?}");
    store.delete(&key("api"), Expected::Any).unwrap();
    let event = next_after(&mut watch.live, last);
    assert!(event.deleted);
    assert_eq!(event.stored.resource.meta.name, "api");
    assert!(event.revision > created.revision);
}

fn watches_from_now(store: &dyn ResourceStore) {
    store
        .apply(vec![(service("shop", "api", 8080), Expected::Absent)])
        .unwrap();
    let now = store.list().unwrap().revision;
    let mut watch = store.watch(now).unwrap();
    assert!(watch.backlog.is_empty());
    let updated = store
        .apply(vec![(service("shop", "api", 9090), Expected::Any)])
        .unwrap();
    let event = next_after(&mut watch.live, now);
    assert!(!event.deleted);
    assert_eq!(event.revision, updated.revision);
    assert_eq!(
        event.stored.resource_version,
        updated.stored[0].resource_version
    );
}

/// A watch's backlog and then its live events, each change once, up to the one at `last`: a
/// backend that learns of its own writes from streams may deliver part of the backlog live,
/// and repeat changes (which consumers skip by version).
fn replay(watch: &mut Watch, since: u64, last: u64) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    let mut pending = std::mem::take(&mut watch.backlog).into_iter();
    while events.last().is_none_or(|e| e.revision < last) {
        let event = pending
            .next()
            .unwrap_or_else(|| next_event(&mut watch.live));
        let repeated = events.iter().any(|e| {
            e.stored.resource.key() == event.stored.resource.key()
                && e.stored.resource_version == event.stored.resource_version
        });
        if event.revision > since && !repeated {
            events.push(event);
        }
    }
    events
}

/// The next live change after revision `after` (earlier ones may be repeats).
fn next_after(live: &mut broadcast::Receiver<Event>, after: u64) -> Event {
    loop {
        let event = next_event(live);
        if event.revision > after {
            return event;
        }
    }
}

/// Whether two resources say the same, whatever metadata their stores added (a creation
/// time, an API server's uid).
fn assert_same(got: &Resource, want: &Resource) {
    assert_eq!(got.key(), want.key());
    assert_eq!(got.spec, want.spec);
    assert_eq!(got.meta.labels, want.meta.labels);
}

/// The next live event; a backend may deliver it from a task of its own, so wait a little
/// (a generous liveness bound, not a timing assertion).
fn next_event(live: &mut broadcast::Receiver<Event>) -> Event {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match live.try_recv() {
            Ok(event) => return event,
            Err(TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => panic!("no live event: {error}"),
        }
    }
}
