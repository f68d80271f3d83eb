//! Weft's demo: two small services, `frontend` and `backend`, each behind its own `weft-proxy`,
//! with `weft-control` signing their certificates — the whole mesh on one machine, started by
//! one command (`cargo run --release -p weft-examples --bin demo`).
//!
//! The apps know nothing of TLS: `frontend` calls `http://backend.demo:8081` through its proxy's
//! outbound port, the proxies carry the call over mTLS, and `backend` answers with the caller
//! identity its proxy verified.

pub mod app;
pub mod launcher;
