//! `weftctl apply`, `get`, `delete`.

use std::path::PathBuf;

use weft_api::admin::{
    ApplyRequest, DeleteRequest, GetRequest, ListRequest, Resource, WatchRequest, watch_event,
};

use super::{AdminClient, CliError};
use crate::policy::{DEFAULT_NAMESPACE, Kind};

/// `weftctl apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A YAML/JSON file, a directory of them, or - for stdin; repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Validate against the control plane without storing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

/// `weftctl get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// service, workload, httproute, grpcroute or servicepolicy (singular, plural or short).
    pub kind: String,
    /// One resource; all of the kind when omitted.
    pub name: Option<String>,
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// After listing, print every change as it happens (until interrupted).
    #[arg(short, long)]
    pub watch: bool,
}

/// `weftctl delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    pub kind: String,
    pub name: String,
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Delete only if the resource is still at this version.
    #[arg(long)]
    pub resource_version: Option<u64>,
}

pub(super) async fn apply(
    args: &ApplyArgs,
    manifests: Vec<serde_json::Value>,
    mut client: AdminClient,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let request = ApplyRequest {
        manifests_json: manifests.iter().map(|m| m.to_string()).collect(),
        dry_run: args.dry_run,
    };
    let response = client.admin.apply(request).await?.into_inner();
    // As kubectl shows the API server's warnings: on stderr, so stdout stays the result.
    for warning in &response.warnings {
        eprintln!("Warning: {warning}");
    }
    let results = response.results;
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    for result in results {
        let _ = writeln!(
            out,
            "{} {}/{} {}{suffix}",
            result.kind, result.namespace, result.name, result.action
        );
    }
    Ok(())
}

pub(super) async fn get(
    args: &GetArgs,
    mut client: AdminClient,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let kind = kind(&args.kind)?;
    let (resources, revision) = match &args.name {
        Some(name) => {
            let resource = client
                .admin
                .get(GetRequest {
                    kind: kind.to_string(),
                    namespace: args.namespace.clone(),
                    name: name.clone(),
                })
                .await?
                .into_inner();
            let revision = resource.resource_version;
            (vec![resource], revision)
        }
        None => {
            let namespace = if args.all_namespaces {
                String::new()
            } else {
                args.namespace.clone()
            };
            let list = client
                .admin
                .list(ListRequest {
                    kind: kind.to_string(),
                    namespace,
                })
                .await?
                .into_inner();
            (list.resources, list.revision)
        }
    };
    match args.output {
        Output::Table => {
            let _ = writeln!(out, "{:<20} {:<32} {:>8}", "NAMESPACE", "NAME", "VERSION");
            for r in &resources {
                let _ = writeln!(
                    out,
                    "{:<20} {:<32} {:>8}",
                    r.namespace, r.name, r.resource_version
                );
            }
        }
        Output::Json => {
            let manifests = manifests(&resources)?;
            let value = match (&args.name, manifests.as_slice()) {
                (Some(_), [one]) => one.clone(),
                _ => serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": manifests }),
            };
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
        }
        Output::Yaml => {
            for (i, manifest) in manifests(&resources)?.iter().enumerate() {
                if i > 0 {
                    let _ = writeln!(out, "---");
                }
                let yaml = serde_saphyr::to_string(manifest)
                    .map_err(|e| CliError(format!("cannot render YAML: {e}")))?;
                let _ = write!(out, "{yaml}");
            }
        }
    }
    if args.watch {
        watch(args, kind, revision, client, out).await?;
    }
    Ok(())
}

/// Prints each change after `revision`, one line each, as it happens.
async fn watch(
    args: &GetArgs,
    kind: Kind,
    revision: u64,
    mut client: AdminClient,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let namespace = if args.all_namespaces {
        String::new()
    } else {
        args.namespace.clone()
    };
    let mut events = client
        .admin
        .watch(WatchRequest {
            kind: kind.to_string(),
            namespace,
            since_revision: revision,
        })
        .await?
        .into_inner();
    while let Some(event) = events.message().await? {
        let Some(resource) = event.resource else {
            continue;
        };
        if args
            .name
            .as_ref()
            .is_some_and(|name| *name != resource.name)
        {
            continue;
        }
        let action = match watch_event::Type::try_from(event.r#type) {
            Ok(watch_event::Type::Deleted) => "DELETED",
            _ => "APPLIED",
        };
        let _ = writeln!(
            out,
            "{action:<8} {} {}/{} {}",
            resource.kind, resource.namespace, resource.name, resource.resource_version
        );
        let _ = out.flush();
    }
    Ok(())
}

pub(super) async fn delete(
    args: &DeleteArgs,
    mut client: AdminClient,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let kind = kind(&args.kind)?;
    client
        .admin
        .delete(DeleteRequest {
            kind: kind.to_string(),
            namespace: args.namespace.clone(),
            name: args.name.clone(),
            resource_version: args.resource_version.unwrap_or(0),
        })
        .await?;
    let _ = writeln!(out, "{kind} {}/{} deleted", args.namespace, args.name);
    Ok(())
}

fn kind(name: &str) -> Result<Kind, CliError> {
    Kind::from_cli(name).ok_or_else(|| {
        CliError(format!(
            "unknown kind {name:?}: use service, workload, httproute, grpcroute or servicepolicy"
        ))
    })
}

fn manifests(resources: &[Resource]) -> Result<Vec<serde_json::Value>, CliError> {
    resources
        .iter()
        .map(|r| {
            serde_json::from_str(&r.manifest_json)
                .map_err(|e| CliError(format!("server sent a bad manifest for {}: {e}", r.name)))
        })
        .collect()
}
