//! Failures as the API server reports them: an HTTP status with a `Status` object whose
//! `reason` clients act on (kube-rs relists on 410 `Expired`, retries a 409 `Conflict`).

use serde_json::{Value, json};

use crate::store::Place;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn not_found(place: &Place) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {:?} not found", plural(place), place.name),
        )
    }

    /// What the API server answers for a resource no API group serves.
    pub fn not_served() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn already_exists(place: &Place) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} {:?} already exists", plural(place), place.name),
        )
    }

    pub fn conflict(place: &Place) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                plural(place),
                place.name
            ),
        )
    }

    pub fn gone(since: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {since} ({oldest})"),
        )
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed(method: &http::Method) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        )
    }

    /// The `Status` object.
    pub fn to_json(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// The resource's plural with its group, as the API server names it in messages.
fn plural(place: &Place) -> String {
    let mut parts = place.resource.rsplitn(3, '/');
    let plural = parts.next().unwrap_or_default();
    let _version = parts.next();
    match parts.next() {
        Some(group) if !group.is_empty() => format!("{plural}.{group}"),
        _ => plural.to_string(),
    }
}
