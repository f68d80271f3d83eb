//! The wire contract between Weft's parts.
//!
//! `weft-proxy` and `weft-control` never depend on each other: they meet only here, in the
//! `.proto` files under `proto/` and the code tonic generates from them at build time. Both sides
//! convert these wire types into their own domain types at the edge.

/// `weft.identity.v1`: certificate signing for proxies.
pub mod identity {
    #![allow(
        missing_docs,
        clippy::all,
        unused_qualifications,
        missing_debug_implementations
    )]
    tonic::include_proto!("weft.identity.v1");
}

/// `weft.discovery.v1`: endpoint and policy streams for proxies.
pub mod discovery {
    #![allow(
        missing_docs,
        clippy::all,
        unused_qualifications,
        missing_debug_implementations
    )]
    tonic::include_proto!("weft.discovery.v1");
}

/// `weft.admin.v1`: the operator API behind `weftctl`.
pub mod admin {
    #![allow(
        missing_docs,
        clippy::all,
        unused_qualifications,
        missing_debug_implementations
    )]
    tonic::include_proto!("weft.admin.v1");
}

pub mod client;
pub mod inbound;
