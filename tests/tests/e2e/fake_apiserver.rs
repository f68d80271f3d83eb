//! The Kubernetes API stand-in the Kubernetes tests run against, checked with kube-rs itself:
//! if these hold, kube-rs clients and reflectors talk to it as to a real API server.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use weft_tests::eventually;
use weft_tests::fake_apiserver::FakeApiServer;

fn service(name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
        "spec": {"ports": [{"port": 8080}]},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_pages_conflicts_watches_and_relists_after_410_gone() {
    weft_tests::init();
    let api = FakeApiServer::start().await;
    let services: Api<Service> = Api::namespaced(api.client().await, "shop");
    for name in ["a", "b", "c", "d", "e"] {
        services
            .create(&PostParams::default(), &service(name))
            .await
            .unwrap();
    }

    // Pages of two, joined by continue tokens.
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    loop {
        let page = services.list(&params).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().filter_map(|s| s.metadata.name.clone()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(names, ["a", "b", "c", "d", "e"]);

    // Optimistic concurrency: a stale resourceVersion conflicts.
    let mut stale = services.get("a").await.unwrap();
    let patch = serde_json::json!({"metadata": {"labels": {"tier": "front"}}});
    services
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    stale.metadata.labels = None;
    let conflict = services
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&conflict, kube::Error::Api(e) if e.code == 409 && e.reason == "Conflict"),
        "{conflict:?}"
    );

    // A reflector lists, then follows.
    let (store, writer) = reflector::store();
    let config = watcher::Config::default();
    let follow = tokio::spawn(
        watcher(services.clone(), config)
            .default_backoff()
            .reflect(writer)
            .applied_objects()
            .for_each(|_| async {}),
    );
    let names_now = || {
        store
            .state()
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect::<BTreeSet<_>>()
    };
    eventually("the reflector to list", Duration::from_secs(10), || {
        let names = names_now();
        async move { (names.len() == 5).then_some(()) }
    })
    .await;

    // History is compacted away: an old resume is 410 Gone, and the reflector relists and
    // converges on changes made meanwhile.
    let revision = services.list(&ListParams::default()).await.unwrap();
    let before = revision.metadata.resource_version.unwrap();
    services
        .delete("b", &DeleteParams::default())
        .await
        .unwrap();
    api.compact().await;
    services
        .create(&PostParams::default(), &service("f"))
        .await
        .unwrap();
    let mut old = services
        .watch(&WatchParams::default(), &before)
        .await
        .unwrap()
        .boxed();
    let first = old.next().await.expect("an event");
    assert!(
        matches!(&first, Ok(WatchEvent::Error(status)) if status.code == 410),
        "{first:?}"
    );
    eventually("the reflector to converge", Duration::from_secs(20), || {
        let names = names_now();
        async move {
            (names == BTreeSet::from(["a", "c", "d", "e", "f"].map(String::from))).then_some(())
        }
    })
    .await;

    // Status is a subresource: writing it leaves the spec, writing the spec leaves the status.
    let status = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.9"}]}}});
    services
        .patch_status("c", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let spec = serde_json::json!({"spec": {"ports": [{"port": 9090}]}, "status": null});
    let updated = services
        .patch("c", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    assert_eq!(updated.spec.unwrap().ports.unwrap()[0].port, 9090);
    let ingress = updated
        .status
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("10.0.0.9"));
    follow.abort();
}
