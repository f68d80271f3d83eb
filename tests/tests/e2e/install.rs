//! `weftctl install` as a user runs it: its objects for `kubectl apply`, and one-line refusals.
//! That they are the chart's objects is `scripts/check-chart`'s comparison with real helm.

use std::process::Command;

use serde_json::Value;
use weft_tests::process::bin;

fn weftctl(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut command = Command::new(bin("weftctl"));
    command.args(args);
    weft_tests::process::run(command)
}

fn parse(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

#[test]
fn without_a_pki_it_makes_one_and_prints_the_namespace_first() {
    let (status, stdout, stderr) = weftctl(&["install", "--namespace", "mesh"]);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("a new trust anchor for cluster.local"),
        "{stderr}"
    );
    let objects = parse(&stdout);
    assert_eq!(objects[0]["kind"], "Namespace");
    assert_eq!(objects[0]["metadata"]["name"], "mesh");
    for object in &objects[1..] {
        let cluster_scoped = [
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ];
        if !cluster_scoped.contains(&object["kind"].as_str().unwrap()) {
            assert_eq!(object["metadata"]["namespace"], "mesh", "{object}");
        }
    }
    let webhook = objects
        .iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    let excluded = &webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"];
    assert!(
        excluded.as_array().unwrap().contains(&"mesh".into()),
        "{excluded}"
    );
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Ignore");
    // Weft's own kinds are checked at admission, failing closed.
    let validating = objects
        .iter()
        .find(|o| o["kind"] == "ValidatingWebhookConfiguration")
        .unwrap();
    assert_eq!(
        validating["webhooks"][0]["clientConfig"]["service"]["path"],
        "/validate"
    );
    assert_eq!(validating["webhooks"][0]["failurePolicy"], "Fail");

    let (status, stdout, _) = weftctl(&["install", "--ha"]);
    assert!(status.success());
    let ha = parse(&stdout);
    let deployment = ha.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert!(ha.iter().any(|o| o["kind"] == "PodDisruptionBudget"));
}

#[test]
fn a_pki_it_cannot_use_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let (status, stdout, stderr) =
        weftctl(&["install", "--identity-dir", missing.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("weftctl: --identity-dir"), "{stderr}");

    let other = dir.path().join("other");
    let (status, _, stderr) = weftctl(&[
        "certs",
        "init",
        "--trust-domain",
        "other.example",
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(status.success(), "{stderr}");
    let (status, stdout, stderr) = weftctl(&["install", "--identity-dir", other.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("other.example"), "{stderr}");
}

#[test]
fn install_crds_prints_weft_s_crds_as_the_chart_ships_them() {
    let (status, stdout, stderr) = weftctl(&["install", "--crds"]);
    assert!(status.success(), "{stderr}");
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/weft/crds/policy.weft.io.yaml"),
    )
    .unwrap();
    assert_eq!(stdout, shipped);
    let kinds: Vec<String> = parse(&stdout)
        .iter()
        .map(|crd| crd["spec"]["names"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "Service",
            "Workload",
            "ServicePolicy",
            "InboundDefaults",
            "AuthorizationPolicy"
        ]
    );
}
