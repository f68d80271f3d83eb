//! Weft's benchmarks. They run the real binaries, like the end-to-end tests (whose harness they
//! reuse), and print Markdown for BENCHMARKS.md.
