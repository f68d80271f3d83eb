//! Weft's benchmarks. They run the real binaries, like the end-to-end tests (whose harness they
//! reuse), and write their results into BENCHMARKS.md.
//!
//! - `weft-bench`: the data path — load generator → client sidecar → mTLS → server sidecar →
//!   upstream — with no sidecars (direct), two weft-proxies, and two Envoys, in one run.
//! - `watch-fanout`: how long a policy change takes to reach N watching proxies.
//! - `benches/hot_paths.rs`: criterion micro-benchmarks of per-request work.

#![allow(missing_docs, clippy::print_stdout, clippy::print_stderr)]

pub mod envoy;
pub mod load;
pub mod measure;
pub mod placement;
pub mod report;
pub mod run;
pub mod topology;
pub mod upstream;

/// Replaces the text between `<!-- {name}:start -->` and `<!-- {name}:end -->` in `path`
/// (appending the section when absent).
pub fn write_section(path: &std::path::Path, name: &str, content: &str) -> std::io::Result<()> {
    let (start, end) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->"),
    );
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{start}\n{}\n{end}", content.trim_end());
    let updated = match (existing.find(&start), existing.find(&end)) {
        (Some(s), Some(e)) if e > s => {
            format!("{}{section}{}", &existing[..s], &existing[e + end.len()..])
        }
        _ => format!("{existing}\n{section}\n"),
    };
    std::fs::write(path, updated)
}
