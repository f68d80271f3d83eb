//! Finding the pod templates in a manifest: a Pod, the workloads that own one, and `List`s of
//! them. Every other kind passes through untouched.

use serde_json::{Map, Value};

use super::pod::{self, Owner};
use super::{INJECT_ANNOTATION, InjectError, InjectSettings};

/// What happened to one pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `kind/name` of the object holding the template.
    pub object: String,
    /// Whether the proxy is in it now, or why not.
    pub result: Result<(), String>,
}

/// Injects every pod template in `doc`; a document with none is left as it is.
pub fn inject_document(
    doc: &mut Value,
    settings: &InjectSettings,
) -> Result<Vec<Outcome>, InjectError> {
    let mut outcomes = Vec::new();
    for_each_template(doc, &mut |object, owner, namespace, metadata, spec| {
        let result = if opted_out(metadata) {
            Err(format!("{INJECT_ANNOTATION}: disabled"))
        } else if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
            // Redirect rules would be installed in the node's network namespace.
            Err("uses the node's network (hostNetwork)".to_string())
        } else {
            pod::inject(metadata, spec, settings, owner, namespace)
                .map_err(|e| InjectError(format!("{object}: {e}")))?;
            Ok(())
        };
        outcomes.push(Outcome { object, result });
        Ok(())
    })?;
    Ok(outcomes)
}

/// Removes the proxy from every pod template in `doc`.
pub fn uninject_document(doc: &mut Value) -> Result<Vec<Outcome>, InjectError> {
    let mut outcomes = Vec::new();
    for_each_template(doc, &mut |object, _, _, metadata, spec| {
        let result = if pod::is_injected(metadata) {
            pod::uninject(metadata, spec);
            Ok(())
        } else {
            Err("not injected".to_string())
        };
        outcomes.push(Outcome { object, result });
        Ok(())
    })?;
    Ok(outcomes)
}

fn opted_out(metadata: &Map<String, Value>) -> bool {
    metadata
        .get("annotations")
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .and_then(Value::as_str)
        == Some("disabled")
}

type Visit<'v> = dyn FnMut(
        String,
        Owner,
        Option<&str>,
        &mut Map<String, Value>,
        &mut Map<String, Value>,
    ) -> Result<(), InjectError>
    + 'v;

fn for_each_template(doc: &mut Value, visit: &mut Visit<'_>) -> Result<(), InjectError> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if kind == "List" || kind.ends_with("List") && doc.get("items").is_some() {
        if let Some(Value::Array(items)) = doc.get_mut("items") {
            for item in items {
                for_each_template(item, visit)?;
            }
        }
        return Ok(());
    }
    let name = doc
        .pointer("/metadata/name")
        .or_else(|| doc.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    let object = format!("{}/{name}", kind.to_lowercase());
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (template, owner) = match kind.as_str() {
        "Pod" => {
            let never_restarts = doc
                .pointer("/spec/restartPolicy")
                .and_then(Value::as_str)
                .is_some_and(|p| p != "Always");
            let owner = if never_restarts {
                Owner::Batch
            } else {
                Owner::Service
            };
            (Some(&mut *doc), owner)
        }
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" => {
            (doc.pointer_mut("/spec/template"), Owner::Service)
        }
        "Job" => (doc.pointer_mut("/spec/template"), Owner::Batch),
        "CronJob" => (
            doc.pointer_mut("/spec/jobTemplate/spec/template"),
            Owner::Batch,
        ),
        _ => return Ok(()),
    };
    let Some(Value::Object(template)) = template else {
        return Err(InjectError(format!("{object}: has no pod template")));
    };
    // Metadata is taken out to be edited beside the spec, and put back where it was.
    let existed = template.contains_key("metadata");
    let mut metadata = match template.get_mut("metadata").map(Value::take) {
        Some(Value::Object(metadata)) => metadata,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(InjectError(format!("{object}: metadata is not a mapping"))),
    };
    let Some(Value::Object(spec)) = template.get_mut("spec") else {
        return Err(InjectError(format!("{object}: its pod has no spec")));
    };
    let result = visit(object, owner, namespace.as_deref(), &mut metadata, spec);
    if metadata.is_empty() {
        template.shift_remove("metadata");
    } else if existed {
        template.insert("metadata".to_string(), Value::Object(metadata));
    } else {
        template.shift_insert(0, "metadata".to_string(), Value::Object(metadata));
    }
    result
}
