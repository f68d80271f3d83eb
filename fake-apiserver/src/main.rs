//! `weft-fake-apiserver`: a Kubernetes API server stand-in for Weft's tests, since no
//! kube-apiserver can run where they do. A real HTTPS process on loopback that speaks what
//! Weft's clients use — get, create, replace, patch (merge, JSON and apply), delete, list with
//! pagination, watch with bookmarks and 410 Gone, status subresources, TokenReview — for any
//! resource path, so kube-rs clients and reflectors talk to it unmodified.
//!
//! Not modelled: a watch with a label selector sees no DELETED when an object's labels move it
//! out of the selection (a real API server sends one); strategic merge and server-side apply
//! are merge patches here.
//!
//! It writes a kubeconfig (its CA, address and bearer token) into `--dir`, prints
//! `listening on <addr>` on stdout once it accepts connections, and serves until killed.

mod paths;
mod select;
mod server;
mod status;
mod store;
mod tokens;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::server::Fake;

#[derive(Debug, Parser)]
#[command(version, about = "A Kubernetes API server stand-in for tests")]
struct Args {
    /// Where to write `kubeconfig` (and nothing else).
    #[arg(long)]
    dir: PathBuf,
    /// How often watches that ask for bookmarks get one, in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    bookmark_ms: u64,
    /// Resources it answers 404 for, as a cluster without their CRDs does
    /// (`httproutes.gateway.networking.k8s.io`).
    #[arg(long, value_delimiter = ',')]
    unserved: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (tls, ca_pem) = tls().context("generating the serving certificate")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let bearer = format!("fake-admin-{:016x}", rand::random::<u64>());
    write_kubeconfig(&args.dir, addr, &ca_pem, &bearer)?;
    let fake = Arc::new(Fake::new(
        bearer,
        Duration::from_millis(args.bookmark_ms),
        args.unserved,
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    // The line tests wait for; stdout is the fake's only output.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let (acceptor, fake) = (acceptor.clone(), fake.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let fake = fake.clone();
                async move { Ok::<_, std::convert::Infallible>(fake.handle(request).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// A CA of its own and a serving certificate for 127.0.0.1 signed by it.
fn tls() -> anyhow::Result<(rustls::ServerConfig, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weft-fake-apiserver-ca");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(
        std::net::Ipv4Addr::LOCALHOST.into(),
    ));
    let cert = params.signed_by(&key, &ca)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, ca_pem))
}

fn write_kubeconfig(
    dir: &Path,
    addr: SocketAddr,
    ca_pem: &str,
    bearer: &str,
) -> anyhow::Result<()> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let config = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: fake\n  cluster:\n    server: https://{addr}\n    certificate-authority-data: {ca}\n\
         users:\n- name: fake\n  user:\n    token: {bearer}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         current-context: fake\n"
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))
}
