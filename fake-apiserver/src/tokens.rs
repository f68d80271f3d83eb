//! ServiceAccount tokens the tests hand out, and TokenReview as the API server answers it:
//! authenticated only for a known, unexpired token whose audiences meet those asked for.

use std::collections::HashMap;

use serde_json::{Value, json};

/// The audiences a token is for when a review names none: the API server's own.
const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// A token the fake accepts, as a projected ServiceAccount token would carry it.
#[derive(Debug, Clone)]
pub struct Token {
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
    pub expired: bool,
}

#[derive(Debug, Default)]
pub struct Tokens {
    known: HashMap<String, Token>,
}

impl Tokens {
    /// Registers a token from its JSON description: `{token, namespace, serviceAccount,
    /// audiences, expired}`.
    pub fn add(&mut self, description: &Value) -> Result<(), String> {
        let text = |field: &str| {
            description[field]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("{field} must be a non-empty string"))
        };
        let token = text("token")?;
        let audiences = match description.get("audiences") {
            None => vec![API_SERVER_AUDIENCE.to_string()],
            Some(list) => list
                .as_array()
                .ok_or("audiences must be a list")?
                .iter()
                .map(|a| {
                    a.as_str()
                        .map(str::to_string)
                        .ok_or("audiences must be strings")
                })
                .collect::<Result<_, _>>()?,
        };
        self.known.insert(
            token,
            Token {
                namespace: text("namespace")?,
                service_account: text("serviceAccount")?,
                audiences,
                expired: description["expired"].as_bool().unwrap_or(false),
            },
        );
        Ok(())
    }

    /// The TokenReview `review` (as posted) with its status filled in.
    pub fn review(&self, mut review: Value) -> Value {
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let asked: Vec<String> = match review["spec"]["audiences"].as_array() {
            Some(list) if !list.is_empty() => list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
            _ => vec![API_SERVER_AUDIENCE.to_string()],
        };
        let status = match self.known.get(token) {
            None => refused("invalid bearer token"),
            Some(known) if known.expired => {
                refused("invalid bearer token, service account token has expired")
            }
            Some(known) => {
                let shared: Vec<&String> = asked
                    .iter()
                    .filter(|a| known.audiences.contains(a))
                    .collect();
                if shared.is_empty() {
                    refused(&format!(
                        "invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}",
                        known.audiences, asked
                    ))
                } else {
                    json!({
                        "authenticated": true,
                        "user": {
                            "username": format!(
                                "system:serviceaccount:{}:{}",
                                known.namespace, known.service_account
                            ),
                            "uid": format!("sa-{}-{}", known.namespace, known.service_account),
                            "groups": [
                                "system:serviceaccounts",
                                format!("system:serviceaccounts:{}", known.namespace),
                                "system:authenticated",
                            ],
                        },
                        "audiences": shared,
                    })
                }
            }
        };
        review["status"] = status;
        review["apiVersion"] = json!("authentication.k8s.io/v1");
        review["kind"] = json!("TokenReview");
        review
    }
}

fn refused(error: &str) -> Value {
    json!({"authenticated": false, "user": {}, "error": format!("[{error}]")})
}
