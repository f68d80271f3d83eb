//! The validating admission webhook for Weft's own kinds: `kubectl apply` of a Service,
//! Workload, ServicePolicy, InboundDefaults or AuthorizationPolicy that weft-control would not
//! read is refused there, with the same field-naming error `weftctl apply` gives. A CRD's
//! schema cannot check everything (SPIFFE ids, regular expressions, addresses, references
//! between fields); without this, such an object would be stored and then ignored, and an
//! ignored AuthorizationPolicy fails open. Gateway API routes are not checked here (another
//! implementation may own them): their problems are reported in their status.

use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::policy::Resource;
use crate::webhook::request_of;

/// The path the ValidatingWebhookConfiguration calls.
pub const VALIDATE_PATH: &str = "/validate";

/// Answers one AdmissionReview (its JSON body); never fails.
pub fn review(body: &[u8]) -> AdmissionReview<DynamicObject> {
    match request_of(body) {
        Ok(request) => respond(&request).into_review(),
        Err(reason) => AdmissionResponse::invalid(reason).into_review(),
    }
}

fn respond(request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return response;
    }
    let Some(object) = &request.object else {
        return response.deny("the review carries no object");
    };
    let mut manifest = match serde_json::to_value(object) {
        Ok(manifest) => manifest,
        Err(error) => return response.deny(format!("cannot read the object: {error}")),
    };
    // The API server has placed the object by now; the review says where.
    if manifest["metadata"]["namespace"].is_null() && request.namespace.is_some() {
        manifest["metadata"]["namespace"] = request.namespace.clone().into();
    }
    match Resource::parse_reporting(&manifest, &request.name) {
        Ok(parsed) if parsed.warnings.is_empty() => response,
        Ok(parsed) => {
            let mut response = response;
            response.warnings = Some(parsed.warnings);
            response
        }
        Err(error) => response.deny(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn review_of(operation: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "7f0b2e0c-0000-4000-8000-000000000001",
                "kind": {"group": "policy.weft.io", "version": "v1alpha1", "kind": object["kind"]},
                "resource": {"group": "policy.weft.io", "version": "v1alpha1", "resource": "authorizationpolicies"},
                "name": object["metadata"]["name"],
                "namespace": "shop",
                "operation": operation,
                "userInfo": {"username": "kubectl"},
                "object": object,
            },
        }))
        .unwrap()
    }

    fn policy(http: Value) -> Value {
        json!({
            "apiVersion": "policy.weft.io/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "web-to-api", "namespace": "shop", "uid": "u-1", "generation": 1},
            "spec": {
                "selector": {"app": "api"},
                "from": [{"identities": ["spiffe://cluster.local/ns/shop/sa/web"]}],
                "http": http,
            },
        })
    }

    fn answer(body: &[u8]) -> AdmissionResponse {
        review(body).response.unwrap()
    }

    #[test]
    fn a_policy_weft_control_reads_is_allowed() {
        let response = answer(&review_of("CREATE", policy(json!([{"method": "GET"}]))));
        assert!(response.allowed, "{:?}", response.result);
    }

    #[test]
    fn a_policy_weft_control_would_not_read_is_refused_naming_the_field() {
        // A misspelt `http` would, ignored, widen the policy to every request.
        let mut object = policy(json!([]));
        object["spec"]["htpp"] = json!([{"method": "GET"}]);
        let response = answer(&review_of("UPDATE", object));
        assert!(!response.allowed);
        let message = &response.result.message;
        assert!(
            message.contains("AuthorizationPolicy shop/web-to-api"),
            "{message}"
        );
        assert!(message.contains("htpp"), "{message}");
    }

    #[test]
    fn deletes_pass_and_a_bad_review_is_refused_with_why() {
        let mut deleting =
            serde_json::from_slice::<Value>(&review_of("DELETE", policy(json!([])))).unwrap();
        deleting["request"]["object"] = Value::Null;
        let response = answer(&serde_json::to_vec(&deleting).unwrap());
        assert!(response.allowed);
        let response = answer(b"{\"kind\": 3}");
        assert!(!response.allowed);
        assert!(response.result.message.contains("not an AdmissionReview"));
    }
}
