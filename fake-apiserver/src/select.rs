//! Label and field selectors, in the forms clients send: `a=b`, `a==b`, `a!=b`, `a`, `!a`,
//! comma-separated; fields `metadata.name` and `metadata.namespace`.

use serde_json::Value;

use crate::status::ApiError;

#[derive(Debug, Clone, Default)]
pub struct Selector {
    terms: Vec<Term>,
}

#[derive(Debug, Clone)]
enum Term {
    Label(String, Test),
    Field(&'static str, Test),
}

#[derive(Debug, Clone)]
enum Test {
    Equals(String),
    Differs(String),
    Exists,
    Absent,
}

impl Selector {
    /// The selector of a request's `labelSelector` and `fieldSelector` parameters.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in labels
            .unwrap_or_default()
            .split(',')
            .filter(|t| !t.is_empty())
        {
            let (key, test) = test(term)?;
            terms.push(Term::Label(key.to_string(), test));
        }
        for term in fields
            .unwrap_or_default()
            .split(',')
            .filter(|t| !t.is_empty())
        {
            let (key, test) = test(term)?;
            let field = match key {
                "metadata.name" => "name",
                "metadata.namespace" => "namespace",
                other => {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {other}"
                    )));
                }
            };
            terms.push(Term::Field(field, test));
        }
        Ok(Self { terms })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|term| {
            let (value, test) = match term {
                Term::Label(key, test) => (object["metadata"]["labels"][key].as_str(), test),
                Term::Field(field, test) => (object["metadata"][*field].as_str(), test),
            };
            match test {
                Test::Equals(wanted) => value == Some(wanted.as_str()),
                Test::Differs(unwanted) => value != Some(unwanted.as_str()),
                Test::Exists => value.is_some(),
                Test::Absent => value.is_none(),
            }
        })
    }
}

fn test(term: &str) -> Result<(&str, Test), ApiError> {
    let term = term.trim();
    if let Some((key, value)) = term.split_once("!=") {
        return Ok((key.trim(), Test::Differs(value.trim().to_string())));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok((key.trim(), Test::Equals(value.trim().to_string())));
    }
    if term.contains(' ') || term.contains('(') {
        return Err(ApiError::bad_request(format!(
            "unable to parse requirement {term:?}: set-based selectors are not supported by the fake"
        )));
    }
    match term.strip_prefix('!') {
        Some(key) => Ok((key, Test::Absent)),
        None => Ok((term, Test::Exists)),
    }
}
