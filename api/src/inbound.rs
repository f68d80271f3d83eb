//! The words of inbound policy, one vocabulary for both sides: users write them in
//! `InboundDefaults`, the control plane sends them in `InboundSettings`, the proxy enforces them.

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether a port takes plaintext clients besides mTLS peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// mTLS only.
    Strict,
    /// Plaintext clients too (kubelet probes, unmeshed callers), then authorized as
    /// unauthenticated.
    Permissive,
}

/// What a port allows where no AuthorizationPolicy covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultAuthorization {
    Deny,
    /// Any client with a verified identity.
    AllAuthenticated,
    /// A client with a verified identity from inside the mesh's networks.
    ClusterAuthenticated,
    /// Anyone.
    AllUnauthenticated,
    /// Anyone; what would have been denied is counted as `audit`.
    Audit,
}

/// The protocol the app speaks on a port, where policy declares it (otherwise detected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppProtocol {
    #[serde(rename = "http")]
    Http1,
    #[serde(rename = "http2")]
    Http2,
}

impl Mode {
    pub const ALL: [Self; 2] = [Self::Strict, Self::Permissive];

    /// The name users write and the wire carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Permissive => "permissive",
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        one_of(value, Self::ALL, Self::as_str)
    }
}

impl DefaultAuthorization {
    pub const ALL: [Self; 5] = [
        Self::Deny,
        Self::AllAuthenticated,
        Self::ClusterAuthenticated,
        Self::AllUnauthenticated,
        Self::Audit,
    ];

    /// The name users write and the wire carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::AllAuthenticated => "all-authenticated",
            Self::ClusterAuthenticated => "cluster-authenticated",
            Self::AllUnauthenticated => "all-unauthenticated",
            Self::Audit => "audit",
        }
    }

    /// The `policy` label of a decision this default made (`weft_inbound_authz_total`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Deny => "default:deny",
            Self::AllAuthenticated => "default:all-authenticated",
            Self::ClusterAuthenticated => "default:cluster-authenticated",
            Self::AllUnauthenticated => "default:all-unauthenticated",
            Self::Audit => "default:audit",
        }
    }

    /// The mode a default implies when nothing sets one: plaintext only where unauthenticated
    /// clients may be allowed.
    pub fn implied_mode(self) -> Mode {
        match self {
            Self::AllUnauthenticated | Self::Audit => Mode::Permissive,
            _ => Mode::Strict,
        }
    }
}

impl FromStr for DefaultAuthorization {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        one_of(value, Self::ALL, Self::as_str)
    }
}

impl AppProtocol {
    pub const ALL: [Self; 2] = [Self::Http1, Self::Http2];

    /// The name the wire carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http",
            Self::Http2 => "http2",
        }
    }
}

impl FromStr for AppProtocol {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        one_of(value, Self::ALL, Self::as_str)
    }
}

/// The word `value` names, or an error listing the words there are.
fn one_of<T: Copy, const N: usize>(
    value: &str,
    all: [T; N],
    name: fn(T) -> &'static str,
) -> Result<T, String> {
    all.into_iter().find(|w| name(*w) == value).ok_or_else(|| {
        let names: Vec<&str> = all.into_iter().map(name).collect();
        format!("{value:?} is not one of {}", names.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_as_written_by_hand_and_by_serde() {
        for mode in Mode::ALL {
            assert_eq!(mode.as_str().parse::<Mode>(), Ok(mode));
            assert_eq!(
                serde_json::to_value(mode).ok(),
                Some(serde_json::json!(mode.as_str()))
            );
        }
        for default in DefaultAuthorization::ALL {
            assert_eq!(
                default.as_str().parse::<DefaultAuthorization>(),
                Ok(default)
            );
            assert_eq!(
                serde_json::to_value(default).ok(),
                Some(serde_json::json!(default.as_str()))
            );
            assert_eq!(default.label(), format!("default:{}", default.as_str()));
        }
        for protocol in AppProtocol::ALL {
            assert_eq!(protocol.as_str().parse::<AppProtocol>(), Ok(protocol));
            assert_eq!(
                serde_json::to_value(protocol).ok(),
                Some(serde_json::json!(protocol.as_str()))
            );
        }
        assert_eq!(
            "lax".parse::<Mode>(),
            Err("\"lax\" is not one of strict, permissive".to_string())
        );
    }
}
