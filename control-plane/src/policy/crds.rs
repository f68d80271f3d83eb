//! Weft's own kinds as CustomResourceDefinitions (`policy.weft.io/v1alpha1`), generated from the
//! Rust types manifests are parsed into, so the API server's schema follows every change to the
//! parser's fields. HTTPRoute and GRPCRoute are the Gateway API's own CRDs.
//!
//! The schemas carry what a type can say (fields, enums, ports 1–65535, durations' grammar,
//! descriptions from the doc comments); what they cannot (an address's syntax, references,
//! regular expressions, ranges across fields) the control plane checks when it reads a
//! resource.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use super::{
    AuthorizationPolicyCrd, InboundDefaultsCrd, ServiceCrd, ServicePolicyCrd, WorkloadCrd,
};

/// Where the chart keeps them: Helm installs `crds/` before anything else.
pub const CHART_FILE: &str = "charts/weft/crds/policy.weft.io.yaml";

/// Every one of Weft's CRDs, in the order `weftctl get all` shows the kinds.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    vec![
        ServiceCrd::crd(),
        WorkloadCrd::crd(),
        ServicePolicyCrd::crd(),
        InboundDefaultsCrd::crd(),
        AuthorizationPolicyCrd::crd(),
    ]
}

/// The resource names of Weft's kinds in their API group (`kubectl get <plural>`), in the same
/// order: what RBAC rules and admission webhooks name.
pub fn plurals() -> Vec<String> {
    definitions()
        .into_iter()
        .map(|crd| crd.spec.names.plural)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A schema the API server accepts must be structural: every node says its type (or is an
    /// int-or-string), with no references or unions left.
    fn structural_faults(schema: &Value, at: &str, faults: &mut Vec<String>) {
        let Some(node) = schema.as_object() else {
            faults.push(format!("{at}: not an object"));
            return;
        };
        for forbidden in ["$ref", "$defs", "definitions", "$schema", "oneOf", "allOf"] {
            if node.contains_key(forbidden) {
                faults.push(format!("{at}: {forbidden}"));
            }
        }
        let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        if node.contains_key("anyOf") && !int_or_string {
            faults.push(format!("{at}: anyOf"));
        }
        if !node.contains_key("type")
            && !int_or_string
            && !node.contains_key("x-kubernetes-preserve-unknown-fields")
        {
            faults.push(format!("{at}: no type"));
        }
        if let Some(properties) = node.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                structural_faults(property, &format!("{at}.{name}"), faults);
            }
        }
        if let Some(items) = node.get("items") {
            structural_faults(items, &format!("{at}[]"), faults);
        }
        if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
            structural_faults(values, &format!("{at}{{}}"), faults);
        }
    }

    fn schema_of(kind: &str) -> Value {
        let crd = definitions()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap();
        serde_json::to_value(&crd.spec.versions[0].schema).unwrap()["openAPIV3Schema"].clone()
    }

    #[test]
    fn every_schema_is_structural_and_validates_what_the_types_know() {
        let mut faults = Vec::new();
        let unstructured = serde_json::json!({"type": "object", "properties": {
            "a": {"$ref": "#/definitions/A"}, "b": {"description": "untyped"}}});
        structural_faults(&unstructured, "x", &mut faults);
        assert_eq!(faults, ["x.a: $ref", "x.a: no type", "x.b: no type"]);
        for crd in definitions() {
            assert_eq!(crd.spec.group, "policy.weft.io");
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(crd.spec.versions[0].name, "v1alpha1");
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            let mut faults = Vec::new();
            structural_faults(
                &schema["openAPIV3Schema"],
                &crd.spec.names.kind,
                &mut faults,
            );
            assert!(faults.is_empty(), "{}: {faults:?}", crd.spec.names.kind);
        }
        let service = schema_of("Service");
        let port =
            &service["properties"]["spec"]["properties"]["ports"]["items"]["properties"]["port"];
        assert_eq!(
            (port["minimum"].as_f64(), port["maximum"].as_f64()),
            (Some(1.0), Some(65535.0))
        );
        let protocol = &service["properties"]["spec"]["properties"]["ports"]["items"]["properties"]
            ["appProtocol"]["enum"];
        assert_eq!(
            protocol,
            &serde_json::json!(["http", "grpc", "kubernetes.io/h2c", "tcp"])
        );
        let policy = schema_of("ServicePolicy");
        let timeout = &policy["properties"]["spec"]["properties"]["connectTimeout"];
        assert_eq!(timeout["pattern"], "^([0-9]{1,5}(h|m|s|ms)){1,4}$");
        let defaults = schema_of("InboundDefaults");
        assert_eq!(
            defaults["properties"]["spec"]["properties"]["mode"]["enum"],
            serde_json::json!(["strict", "permissive"])
        );
    }

    /// The custom resources scripts/check-chart checks against these schemas parse here too,
    /// without a warning: the API server and weft-control accept the same manifests.
    #[test]
    fn what_the_schemas_accept_weft_control_accepts() {
        let yaml = include_str!("../../../charts/weft/tests/resources/every-kind.yaml");
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap();
        assert_eq!(docs.len(), definitions().len());
        for (i, doc) in docs.iter().enumerate() {
            let parsed = crate::policy::Resource::parse_reporting(doc, &format!("document {i}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        }
    }

    #[test]
    fn the_chart_ships_the_crds_the_types_generate() {
        let mut generated = Vec::new();
        crate::cli::write_crds(&mut generated).unwrap();
        let shipped = include_str!("../../../charts/weft/crds/policy.weft.io.yaml");
        assert!(
            shipped.as_bytes() == generated.as_slice(),
            "{CHART_FILE} is stale: regenerate it with `cargo run -q -p weft-control-plane --bin weftctl -- install --crds > {CHART_FILE}`"
        );
    }
}
