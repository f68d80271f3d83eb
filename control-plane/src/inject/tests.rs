//! Injection against the fixtures in `tests/fixtures/inject`: each input's injected form is
//! kept beside it (`*.injected.yaml`, the files `scripts/check-manifests` validates against the
//! Kubernetes schemas). `WEFT_BLESS=1 cargo test -p weft-control-plane inject` rewrites them
//! after a deliberate change; review the diff.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;

/// Fixed, so that the expected files stay the same from run to run; the injector copies the
/// PEM without reading it (weftctl checks it before).
const ANCHORS: &str = "-----BEGIN CERTIFICATE-----\nMIIBfixture\n-----END CERTIFICATE-----\n";

fn settings(identity: IdentitySource) -> InjectSettings {
    InjectSettings {
        proxy_image: "localhost/weft-proxy:0.1.0".to_string(),
        init_image: "localhost/weft-init:0.1.0".to_string(),
        proxy_version: "0.1.0".to_string(),
        trust_domain: weft_certs::TrustDomain::cluster_local(),
        control_plane_addr: "weft-control.weft.svc.cluster.local:7200".to_string(),
        trust_anchors_pem: ANCHORS.to_string(),
        identity,
        sidecar_mode: SidecarMode::Native,
        trace_endpoint: None,
        access_log: false,
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

fn parse(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap()
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

fn render(docs: &[Value]) -> String {
    serde_saphyr::to_string_multiple(docs).unwrap()
}

fn inject_all(docs: &mut [Value], settings: &InjectSettings) -> Vec<Outcome> {
    docs.iter_mut()
        .flat_map(|doc| inject_document(doc, settings).unwrap())
        .collect()
}

/// Compares with the expected file, or writes it under `WEFT_BLESS`.
fn expect_file(path: &Path, actual: &str) {
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (WEFT_BLESS=1 writes it)", path.display()));
    assert!(
        expected == actual,
        "{} differs from what injection gives now:\n{actual}",
        path.display()
    );
}

fn inputs() -> Vec<PathBuf> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            name.ends_with(".yaml") && !name.contains(".injected")
        })
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 9, "fixtures missing: {inputs:?}");
    inputs
}

#[test]
fn every_fixture_injects_as_expected_twice_the_same_and_uninjects_to_its_input() {
    let variants = [
        ("injected", IdentitySource::ServiceAccountToken),
        (
            "join-token.injected",
            IdentitySource::JoinTokenSecret("weft-join-token".to_string()),
        ),
    ];
    for input in inputs() {
        let original = parse(&std::fs::read_to_string(&input).unwrap());
        for (suffix, identity) in &variants {
            // The join-token variant of one workload kind is enough to pin down its volume.
            let stem = input.file_stem().unwrap().to_string_lossy();
            if *suffix != "injected" && stem != "deployment" {
                continue;
            }
            let settings = settings(identity.clone());
            let mut docs = original.clone();
            let outcomes = inject_all(&mut docs, &settings);
            assert!(
                outcomes.iter().any(|o| o.result.is_ok()),
                "{}: nothing injected: {outcomes:?}",
                input.display()
            );
            let injected = render(&docs);
            expect_file(&input.with_extension(format!("{suffix}.yaml")), &injected);

            let mut again = parse(&injected);
            inject_all(&mut again, &settings);
            assert_eq!(
                render(&again),
                injected,
                "{}: injecting twice",
                input.display()
            );

            let mut back = parse(&injected);
            for doc in &mut back {
                uninject_document(doc).unwrap();
            }
            assert_eq!(back, original, "{}: uninject", input.display());
            assert_eq!(
                render(&back),
                render(&original),
                "{}: uninject",
                input.display()
            );
        }
    }
}

fn pod_with(annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    })
}

#[test]
fn a_bad_annotation_is_refused_with_its_name_and_the_manifest_is_untouched() {
    let cases = [
        ("config.weft.io/opaque-ports", "5432,x", "\"x\", not a port"),
        ("config.weft.io/opaque-ports", "6000-6010", "not a port"),
        ("config.weft.io/skip-inbound-ports", "0", "not a port"),
        ("config.weft.io/skip-outbound-ports", "90-80", "empty range"),
        (
            "config.weft.io/skip-outbound-cidrs",
            "10.0.0.0/33",
            "not a CIDR",
        ),
        (
            "config.weft.io/default-inbound-policy",
            "allow",
            "is not one of",
        ),
        (
            "config.weft.io/sidecar-mode",
            "sidecar",
            "native or classic",
        ),
        ("config.weft.io/proxy-log-level", "loud", "not a log level"),
        (
            "config.weft.io/proxy-cpu-request",
            "lots",
            "resource quantity",
        ),
        (
            "config.weft.io/proxy-memory-limit",
            "64MB",
            "resource quantity",
        ),
        (
            "config.weft.io/trace-sampling",
            "1.5",
            "ratio between 0 and 1",
        ),
        ("config.weft.io/opaque-port", "5432", "not one Weft knows"),
    ];
    for (annotation, value, why) in cases {
        let original = pod_with(&[(annotation, value)]);
        let mut doc = original.clone();
        let err = inject_document(&mut doc, &settings(IdentitySource::ServiceAccountToken))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("pod/web: annotation "), "{err}");
        assert!(err.contains(annotation), "{err}");
        assert!(err.contains(why), "{annotation}={value}: {err}");
        assert!(!err.contains('\n'), "{err}");
        assert_eq!(doc, original, "{annotation}={value}");
    }
}

#[test]
fn ranges_and_lists_that_the_proxy_takes_are_accepted() {
    let mut doc = pod_with(&[
        ("config.weft.io/skip-inbound-ports", "22, 8000-8100,9000"),
        ("config.weft.io/skip-outbound-cidrs", "10.0.0.0/8,fd00::/8"),
        (
            "config.weft.io/proxy-log-level",
            "warn,weft_proxy::inbound=trace",
        ),
        ("config.weft.io/proxy-cpu-request", "0.5"),
        ("config.weft.io/proxy-memory-limit", "1Gi"),
        ("config.weft.io/trace-sampling", "0"),
    ]);
    let outcomes =
        inject_document(&mut doc, &settings(IdentitySource::ServiceAccountToken)).unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].result, Ok(()));
}

#[test]
fn the_mesh_wide_trace_endpoint_and_access_log_reach_the_proxy() {
    let mut doc = pod_with(&[("config.weft.io/trace-sampling", "0.5")]);
    let traced = InjectSettings {
        trace_endpoint: Some("http://otel-collector.observability:4317".to_string()),
        access_log: true,
        ..settings(IdentitySource::ServiceAccountToken)
    };
    inject_document(&mut doc, &traced).unwrap();
    let text = doc.to_string();
    for (name, value) in [
        (
            "WEFT_PROXY_TRACE_ENDPOINT",
            "http://otel-collector.observability:4317",
        ),
        ("WEFT_PROXY_TRACE_SAMPLING", "0.5"),
        ("WEFT_PROXY_ACCESS_LOG", "json"),
    ] {
        assert!(
            text.contains(&format!("{{\"name\":\"{name}\",\"value\":\"{value}\"}}")),
            "{name} in {text}"
        );
    }
    let mut plain = pod_with(&[]);
    inject_document(&mut plain, &settings(IdentitySource::ServiceAccountToken)).unwrap();
    assert!(!plain.to_string().contains("WEFT_PROXY_TRACE_ENDPOINT"));
}

#[test]
fn pods_choose_by_their_annotation_else_their_namespace() {
    let annotated = |value: &str| {
        let mut map = serde_json::Map::new();
        map.insert(
            INJECT_ANNOTATION.to_string(),
            Value::String(value.to_string()),
        );
        map
    };
    let (enabled, disabled, other) = (
        annotated("enabled"),
        annotated("disabled"),
        annotated("yes"),
    );
    assert!(wanted(Some(&enabled), None));
    assert!(wanted(None, Some(&enabled)));
    assert!(!wanted(Some(&disabled), Some(&enabled)));
    assert!(wanted(Some(&enabled), Some(&disabled)));
    assert!(!wanted(None, None));
    assert!(!wanted(Some(&other), None));
    assert!(!wanted(None, Some(&disabled)));
}

#[test]
fn a_workload_without_a_pod_spec_is_an_error_naming_it() {
    let mut doc = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "broken"},
        "spec": {"replicas": 1},
    });
    let err = inject_document(&mut doc, &settings(IdentitySource::ServiceAccountToken))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "deployment/broken: has no pod template");
}
