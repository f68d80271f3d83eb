//! Reading manifests: YAML or JSON files, directories of them, or stdin; several documents per
//! file separated by `---`.

use std::path::{Path, PathBuf};

use super::CliError;

/// Reads every manifest from `sources` (`-` is stdin) as JSON documents, in order.
pub fn read(sources: &[PathBuf]) -> Result<Vec<serde_json::Value>, CliError> {
    if sources.is_empty() {
        return Err(CliError(
            "no manifests given: use -f FILE, -f DIR or -f -".to_string(),
        ));
    }
    let mut manifests = Vec::new();
    for source in sources {
        if source.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| CliError(format!("stdin: {e}")))?;
            manifests.extend(parse("stdin", &text)?);
        } else if source.is_dir() {
            for file in files_in(source)? {
                manifests.extend(parse_file(&file)?);
            }
        } else {
            manifests.extend(parse_file(source)?);
        }
    }
    if manifests.is_empty() {
        return Err(CliError("no manifests found".to_string()));
    }
    Ok(manifests)
}

/// The YAML and JSON files of a directory, sorted by name so applies are repeatable.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn parse_file(path: &Path) -> Result<Vec<serde_json::Value>, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    parse(&path.display().to_string(), &text)
}

/// Parses the documents of one source; empty documents are skipped.
pub fn parse(name: &str, text: &str) -> Result<Vec<serde_json::Value>, CliError> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        CliError(format!(
            "{name}: invalid YAML: {}",
            one_line(&e.to_string())
        ))
    })?;
    let mut manifests = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        match doc {
            serde_json::Value::Null => {}
            serde_json::Value::Object(_) => manifests.push(doc),
            _ => {
                return Err(CliError(format!(
                    "{name}: document {} is not a mapping",
                    i + 1
                )));
            }
        }
    }
    Ok(manifests)
}

/// The parser's first line, which says where and what; the rest is a drawing of the input.
fn one_line(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    first.trim_start_matches("error: ").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_documents_and_empty_ones() {
        let docs = parse("x", "a: 1\n---\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
    }

    #[test]
    fn invalid_yaml_names_the_file() {
        let err = parse("routes.yaml", "a: [1, 2\nb: c")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("routes.yaml: invalid YAML:"), "{err}");
        assert!(!err.contains('\n'));
        let err = parse("list.yaml", "- 1\n- 2\n").unwrap_err().to_string();
        assert_eq!(err, "list.yaml: document 1 is not a mapping");
    }
}
