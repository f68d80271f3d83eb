//! The wire contract between Weft's parts.
//!
//! `weft-proxy` and `weft-control` never depend on each other: they meet only here, in the
//! `.proto` files under `proto/` and the code tonic generates from them at build time. Both sides
//! convert these wire types into their own domain types at the edge.

/// The generated code, nested as the packages are so that references across packages (the
/// admin API's to the tap API's messages) resolve.
#[allow(
    missing_docs,
    clippy::all,
    unused_qualifications,
    missing_debug_implementations
)]
mod generated {
    pub mod weft {
        pub mod identity {
            pub mod v1 {
                tonic::include_proto!("weft.identity.v1");
            }
        }
        pub mod discovery {
            pub mod v1 {
                tonic::include_proto!("weft.discovery.v1");
            }
        }
        pub mod admin {
            pub mod v1 {
                tonic::include_proto!("weft.admin.v1");
            }
        }
        pub mod tap {
            pub mod v1 {
                tonic::include_proto!("weft.tap.v1");
            }
        }
    }
}

/// `weft.admin.v1`: the operator API behind `weftctl`.
pub use generated::weft::admin::v1 as admin;
/// `weft.discovery.v1`: endpoint and policy streams for proxies.
pub use generated::weft::discovery::v1 as discovery;
/// `weft.identity.v1`: certificate signing for proxies.
pub use generated::weft::identity::v1 as identity;
/// `weft.tap.v1`: the proxies' live view of their requests, and their configuration, for admins.
pub use generated::weft::tap::v1 as tap;

pub mod client;
pub mod inbound;
pub mod server;
