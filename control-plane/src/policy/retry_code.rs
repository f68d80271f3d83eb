//! What a route's retry is triggered by: HTTP statuses for HTTPRoute, gRPC statuses for
//! GRPCRoute. Checked when the manifest is read; shown back as written.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a rule's retry codes mean to the proxy: response statuses, or gRPC statuses of calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOn {
    HttpStatuses(Vec<u16>),
    GrpcStatuses(Vec<u32>),
}

/// A code a route kind's retry names.
pub trait RetryCode {
    /// What the proxy retries on, for a rule's `codes`.
    fn retry_on(codes: &[Self]) -> RetryOn
    where
        Self: Sized;
}

impl RetryCode for HttpStatus {
    fn retry_on(codes: &[Self]) -> RetryOn {
        RetryOn::HttpStatuses(codes.iter().map(|c| c.get()).collect())
    }
}

impl RetryCode for GrpcStatus {
    fn retry_on(codes: &[Self]) -> RetryOn {
        RetryOn::GrpcStatuses(codes.iter().map(|c| c.code()).collect())
    }
}

/// An HTTP status a response is retried on: 400–599.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpStatus(u16);

impl HttpStatus {
    /// The status code.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl Serialize for HttpStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for HttpStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let written = serde_json::Value::deserialize(deserializer)?;
        written
            .as_u64()
            .filter(|code| (400..=599).contains(code))
            .and_then(|code| u16::try_from(code).ok())
            .map(Self)
            .ok_or_else(|| D::Error::custom(format!("{written} is not an HTTP status 400-599")))
    }
}

inline_json_schema!(HttpStatus, {"type": "integer", "minimum": 400, "maximum": 599});

/// The gRPC status names, by code.
const GRPC_CODES: [&str; 17] = weft_telemetry::GRPC_CODE_NAMES;

/// A gRPC status a call is retried on, by name (`UNAVAILABLE`, any case) or number (14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    code: u32,
    /// As written, name or number.
    written: serde_json::Value,
}

impl GrpcStatus {
    pub fn code(&self) -> u32 {
        self.code
    }
}

impl Serialize for GrpcStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.written.serialize(serializer)
    }
}

inline_json_schema!(GrpcStatus, {
    "x-kubernetes-int-or-string": true,
    "description": "A gRPC status by name (UNAVAILABLE) or number (14).",
});

impl<'de> Deserialize<'de> for GrpcStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let written = serde_json::Value::deserialize(deserializer)?;
        let code = match &written {
            serde_json::Value::Number(n) => n.as_u64().filter(|n| *n < 17).map(|n| n as u32),
            serde_json::Value::String(s) => GRPC_CODES
                .iter()
                .position(|name| name.eq_ignore_ascii_case(s))
                .map(|i| i as u32),
            _ => None,
        };
        match code {
            Some(code) => Ok(Self { code, written }),
            None => Err(D::Error::custom(format!(
                "{written} is not a gRPC status (UNAVAILABLE or 14)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_back_as_written_and_refuse_what_they_are_not() {
        let status: HttpStatus = serde_json::from_value(serde_json::json!(503)).unwrap();
        assert_eq!(status.get(), 503);
        for bad in [serde_json::json!(200), serde_json::json!("503")] {
            let error = serde_json::from_value::<HttpStatus>(bad.clone()).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("{bad} is not an HTTP status 400-599")
            );
        }
        for (written, code) in [
            (serde_json::json!("unavailable"), 14),
            (serde_json::json!(4), 4),
        ] {
            let status: GrpcStatus = serde_json::from_value(written.clone()).unwrap();
            assert_eq!(status.code(), code);
            assert_eq!(serde_json::to_value(&status).unwrap(), written);
        }
        let error = serde_json::from_value::<GrpcStatus>(serde_json::json!("SLOW")).unwrap_err();
        assert!(
            error.to_string().contains("is not a gRPC status"),
            "{error}"
        );
        assert!(serde_json::from_value::<GrpcStatus>(serde_json::json!(17)).is_err());
    }
}
