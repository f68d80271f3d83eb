//! Running the firewall tools, their failures turned into one line each.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `tool` and returns what it printed, or why it failed.
pub fn run(tool: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    outcome(tool, output)
}

/// Runs `tool` with `input` on its standard input.
pub fn run_with_input(tool: &str, args: &[&str], input: &str) -> Result<String, String> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("cannot write to {tool}: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{tool} did not finish: {e}"))?;
    outcome(tool, output)
}

fn outcome(tool: &str, output: std::process::Output) -> Result<String, String> {
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let why: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Err(format!(
        "{tool} failed ({}): {}",
        output.status,
        why.join("; ")
    ))
}
