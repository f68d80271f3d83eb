//! The hierarchy end to end: generate, request, sign, verify, and handshake.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;

use super::*;

struct Pki {
    anchor: TrustAnchor,
    issuer: Issuer,
    anchors: TrustAnchors,
}

fn pki(trust_domain: &str) -> Pki {
    let td: TrustDomain = trust_domain.parse().unwrap();
    let anchor = TrustAnchor::generate(&td, SystemTime::now()).unwrap();
    let issuer = anchor.generate_issuer(SystemTime::now()).unwrap();
    let anchors = TrustAnchors::from_pem(anchor.certificate_pem().as_bytes()).unwrap();
    Pki {
        anchor,
        issuer,
        anchors,
    }
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

/// Generates a key, sends a CSR through the issuer and returns the chain and the key.
fn leaf(
    pki: &Pki,
    identity: &Identity,
    lifetime: Duration,
    now: SystemTime,
) -> (IssuedCertificate, LeafKey) {
    let key = LeafKey::generate().unwrap();
    let csr = key.csr(identity).unwrap();
    let request = CertificateRequest::from_der(&csr).unwrap();
    request.require_identity(identity).unwrap();
    (pki.issuer.sign(&request, lifetime, now).unwrap(), key)
}

#[test]
fn valid_chain_is_accepted_with_its_identity() {
    let pki = pki("cluster.local");
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let (issued, _) = leaf(&pki, &web, DEFAULT_LEAF_LIFETIME, SystemTime::now());
    assert_eq!(
        verify_peer(&pki.anchors, &issued.chain, &web, SystemTime::now()).unwrap(),
        web
    );
    let td = pki.anchor.trust_domain().clone();
    assert_eq!(
        verify_client(&pki.anchors, &td, &issued.chain, SystemTime::now()).unwrap(),
        web
    );
    assert_eq!(identity_of(&issued.chain[0]).unwrap(), web);
}

#[test]
fn chain_from_another_trust_anchor_is_rejected() {
    let ours = pki("cluster.local");
    let theirs = pki("cluster.local");
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let (issued, _) = leaf(&theirs, &web, DEFAULT_LEAF_LIFETIME, SystemTime::now());
    // Both anchors share a subject name, so webpki finds "ours" and its signature check fails.
    let err = verify_peer(&ours.anchors, &issued.chain, &web, SystemTime::now()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Chain(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature | rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{err}"
    );
    let td = ours.anchor.trust_domain().clone();
    assert!(verify_client(&ours.anchors, &td, &issued.chain, SystemTime::now()).is_err());
}

#[test]
fn expired_and_not_yet_valid_leaves_are_rejected() {
    let pki = pki("cluster.local");
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let now = SystemTime::now();
    let (issued, _) = leaf(&pki, &web, Duration::from_secs(3600), now);
    let expired = verify_peer(
        &pki.anchors,
        &issued.chain,
        &web,
        now + Duration::from_secs(7200),
    )
    .unwrap_err();
    assert!(
        expired.to_string().contains("certificate expired"),
        "{expired}"
    );
    let early = verify_peer(
        &pki.anchors,
        &issued.chain,
        &web,
        now - Duration::from_secs(3600),
    )
    .unwrap_err();
    assert!(early.to_string().contains("not valid yet"), "{early}");
}

#[test]
fn wrong_identity_is_rejected() {
    let pki = pki("cluster.local");
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let db = id("spiffe://cluster.local/ns/shop/sa/db");
    let (issued, _) = leaf(&pki, &web, DEFAULT_LEAF_LIFETIME, SystemTime::now());
    let err = verify_peer(&pki.anchors, &issued.chain, &db, SystemTime::now()).unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
}

#[test]
fn client_of_another_trust_domain_is_rejected() {
    // Same anchor, but the issuer signs for another trust domain: the identity check must catch it.
    let pki = pki("other.example");
    let web = id("spiffe://other.example/ns/shop/sa/web");
    let (issued, _) = leaf(&pki, &web, DEFAULT_LEAF_LIFETIME, SystemTime::now());
    let ours: TrustDomain = "cluster.local".parse().unwrap();
    let err = verify_client(&pki.anchors, &ours, &issued.chain, SystemTime::now()).unwrap_err();
    assert!(
        matches!(err, VerifyError::ForeignTrustDomain { .. }),
        "{err}"
    );
}

#[test]
fn malformed_csrs_are_rejected_with_a_clear_error() {
    let err = CertificateRequest::from_der(b"not a csr").unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed CSR: not a DER PKCS#10 certificate request"
    );

    // A valid CSR with one flipped byte in its signature.
    let key = LeafKey::generate().unwrap();
    let mut csr = key
        .csr(&id("spiffe://cluster.local/ns/a/sa/b"))
        .unwrap()
        .to_vec();
    let last = csr.len() - 2;
    csr[last] ^= 0xff;
    let err = CertificateRequest::from_der(&csr).unwrap_err();
    assert!(
        matches!(err, CsrError::BadSignature | CsrError::Malformed(_)),
        "{err}"
    );

    // A CSR with no SPIFFE identity.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["web.example".to_string()]).unwrap();
    let csr = params.serialize_request(&key).unwrap();
    let err = CertificateRequest::from_der(csr.der()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR must carry exactly one spiffe:// URI SAN, found 0"
    );

    // A CSR with a key type Weft does not issue for.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/a/sa/b".try_into().unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap();
    assert!(matches!(
        CertificateRequest::from_der(csr.der()).unwrap_err(),
        CsrError::UnsupportedKey
    ));
}

#[test]
fn csr_for_an_identity_other_than_the_proven_one_is_rejected() {
    let key = LeafKey::generate().unwrap();
    let csr = key
        .csr(&id("spiffe://cluster.local/ns/shop/sa/admin"))
        .unwrap();
    let request = CertificateRequest::from_der(&csr).unwrap();
    let err = request
        .require_identity(&id("spiffe://cluster.local/ns/shop/sa/web"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR asks for spiffe://cluster.local/ns/shop/sa/admin but the caller proved spiffe://cluster.local/ns/shop/sa/web"
    );
}

#[test]
fn issuer_refuses_identities_of_other_trust_domains() {
    let pki = pki("cluster.local");
    let key = LeafKey::generate().unwrap();
    let foreign = id("spiffe://evil.example/ns/a/sa/b");
    let err = pki
        .issuer
        .issue(
            key.public_key(),
            &foreign,
            DEFAULT_LEAF_LIFETIME,
            SystemTime::now(),
        )
        .unwrap_err();
    assert!(matches!(err, AuthorityError::ForeignIdentity { .. }));
}

#[test]
fn issuer_round_trips_through_pem_and_keeps_its_trust_domain() {
    let pki = pki("prod.example");
    let loaded = Issuer::from_pem(&pki.issuer.certificate_pem(), pki.issuer.key_pem()).unwrap();
    assert_eq!(loaded.trust_domain().as_str(), "prod.example");
    let web = id("spiffe://prod.example/ns/shop/sa/web");
    let key = LeafKey::generate().unwrap();
    let issued = loaded
        .issue(
            key.public_key(),
            &web,
            DEFAULT_LEAF_LIFETIME,
            SystemTime::now(),
        )
        .unwrap();
    verify_peer(&pki.anchors, &issued.chain, &web, SystemTime::now()).unwrap();
}

#[test]
fn leaf_never_outlives_its_issuer() {
    let pki = pki("cluster.local");
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let (issued, _) = leaf(
        &pki,
        &web,
        Duration::from_secs(5 * 365 * 24 * 3600),
        SystemTime::now(),
    );
    assert!(issued.not_after <= pki.issuer.not_after());
}

/// Runs a real TLS 1.3 handshake in memory between a client dialing `dial` and a server.
fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
    dial: &Identity,
) -> Result<Option<Identity>, rustls::Error> {
    let name = ServerName::try_from(dial.dns_name()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
    let mut server = rustls::ServerConnection::new(Arc::new(server))?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets()?;
        let mut buf = Vec::new();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    Ok(server
        .peer_certificates()
        .map(|certs| identity_of(&certs[0]).unwrap()))
}

fn store_for(pki: &Pki, identity: &Identity) -> Arc<CertStore> {
    let (issued, key) = leaf(pki, identity, DEFAULT_LEAF_LIFETIME, SystemTime::now());
    let store = CertStore::new();
    store.set(Credential {
        key: key.certify(issued.chain).unwrap(),
        identity: identity.clone(),
        valid_from: SystemTime::now(),
        not_after: issued.not_after,
    });
    store
}

#[test]
fn mutual_tls_handshake_records_the_client_identity() {
    let pki = pki("cluster.local");
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let db = id("spiffe://cluster.local/ns/shop/sa/db");
    let td = pki.anchor.trust_domain().clone();
    let client = client_config(&pki.anchors, store_for(&pki, &web), &[ALPN_WEFT]).unwrap();
    let server = server_config(
        &pki.anchors,
        &td,
        store_for(&pki, &db),
        ClientAuth::Required,
        &[ALPN_WEFT],
    )
    .unwrap();
    assert_eq!(handshake(client, server, &db).unwrap(), Some(web));
}

#[test]
fn handshake_fails_when_the_server_is_not_the_identity_dialed() {
    let pki = pki("cluster.local");
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let db = id("spiffe://cluster.local/ns/shop/sa/db");
    let cache = id("spiffe://cluster.local/ns/shop/sa/cache");
    let td = pki.anchor.trust_domain().clone();
    let client = client_config(&pki.anchors, store_for(&pki, &web), &[ALPN_WEFT]).unwrap();
    let server = server_config(
        &pki.anchors,
        &td,
        store_for(&pki, &db),
        ClientAuth::Required,
        &[ALPN_WEFT],
    )
    .unwrap();
    assert!(handshake(client, server, &cache).is_err());
}

#[test]
fn required_client_auth_refuses_a_client_without_a_certificate() {
    let pki = pki("cluster.local");
    let db = id("spiffe://cluster.local/ns/shop/sa/db");
    let td = pki.anchor.trust_domain().clone();
    let client = client_config(&pki.anchors, CertStore::new(), &[ALPN_WEFT]).unwrap();
    let server = server_config(
        &pki.anchors,
        &td,
        store_for(&pki, &db),
        ClientAuth::Required,
        &[ALPN_WEFT],
    )
    .unwrap();
    assert!(handshake(client, server, &db).is_err());

    let client = client_config(&pki.anchors, CertStore::new(), &[ALPN_WEFT]).unwrap();
    let server = server_config(
        &pki.anchors,
        &td,
        store_for(&pki, &db),
        ClientAuth::Optional,
        &[ALPN_WEFT],
    )
    .unwrap();
    assert_eq!(handshake(client, server, &db).unwrap(), None);
}

#[test]
fn uses_the_post_quantum_hybrid_key_exchange_and_aes_128_first() {
    let groups = provider()
        .kx_groups
        .iter()
        .map(|g| g.name())
        .collect::<Vec<_>>();
    assert_eq!(groups[0], rustls::NamedGroup::X25519MLKEM768);
    assert_eq!(
        provider().cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
}

#[test]
fn an_expired_client_certificate_is_not_presented() {
    let pki = pki("cluster.local");
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let db = id("spiffe://cluster.local/ns/shop/sa/db");
    let td = pki.anchor.trust_domain().clone();
    // Issued two hours ago for one hour.
    let (issued, key) = leaf(
        &pki,
        &web,
        Duration::from_secs(3600),
        SystemTime::now() - Duration::from_secs(7200),
    );
    let store = CertStore::new();
    store.set(Credential {
        key: key.certify(issued.chain).unwrap(),
        identity: web,
        valid_from: SystemTime::now() - Duration::from_secs(7200),
        not_after: issued.not_after,
    });
    assert!(!store.is_valid_at(SystemTime::now()));
    // Against a server where client certificates are optional, the handshake still succeeds,
    // anonymously, so the client can prove itself another way.
    let client = client_config(&pki.anchors, store, &[ALPN_H2]).unwrap();
    let server = server_config(
        &pki.anchors,
        &td,
        store_for(&pki, &db),
        ClientAuth::Optional,
        &[ALPN_H2],
    )
    .unwrap();
    assert_eq!(handshake(client, server, &db).unwrap(), None);
}

#[test]
fn readiness_ends_in_the_last_tenth_of_the_lifetime() {
    let pki = pki("cluster.local");
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let now = SystemTime::now();
    let (issued, key) = leaf(&pki, &web, Duration::from_secs(100), now);
    let store = CertStore::new();
    assert!(!store.is_ready_at(now));
    store.set(Credential {
        key: key.certify(issued.chain).unwrap(),
        identity: web,
        valid_from: now,
        not_after: issued.not_after,
    });
    assert!(store.is_ready_at(now + Duration::from_secs(89)));
    assert!(!store.is_ready_at(now + Duration::from_secs(91)));
    assert!(store.is_valid_at(now + Duration::from_secs(91)));
    assert!(!store.is_valid_at(now + Duration::from_secs(101)));
}

#[test]
fn an_expired_issuer_refuses_to_sign() {
    let pki = pki("cluster.local");
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let key = LeafKey::generate().unwrap();
    let after_expiry = pki.issuer.not_after() + Duration::from_secs(1);
    let err = pki
        .issuer
        .issue(key.public_key(), &web, DEFAULT_LEAF_LIFETIME, after_expiry)
        .unwrap_err();
    assert!(matches!(err, AuthorityError::IssuerExpired(_)), "{err}");
}

#[test]
fn a_rotated_trust_store_applies_to_the_next_verification() {
    let (old, new) = (pki("cluster.local"), pki("cluster.local"));
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let now = SystemTime::now();
    let (under_old, _) = leaf(&old, &web, DEFAULT_LEAF_LIFETIME, now);
    let (under_new, _) = leaf(&new, &web, DEFAULT_LEAF_LIFETIME, now);
    let trust = TrustStore::new(old.anchors.clone());
    let verifier = PeerClientVerifier::new(trust.clone(), old.anchor.trust_domain().clone(), true);
    let verify = |chain: &[rustls::pki_types::CertificateDer<'static>]| {
        use rustls::server::danger::ClientCertVerifier;
        verifier
            .verify_client_cert(&chain[0], &chain[1..], rustls::pki_types::UnixTime::now())
            .is_ok()
    };
    assert!(verify(&under_old.chain) && !verify(&under_new.chain));
    // The bundle of both, as during an anchor rotation.
    let bundle = format!(
        "{}{}",
        old.anchor.certificate_pem(),
        new.anchor.certificate_pem()
    );
    trust.set(TrustAnchors::from_pem(bundle.as_bytes()).unwrap());
    assert!(verify(&under_old.chain) && verify(&under_new.chain));
    trust.set(new.anchors.clone());
    assert!(!verify(&under_old.chain) && verify(&under_new.chain));
}

#[test]
fn an_anchor_loaded_from_pem_signs_issuers_its_anchors_trust() {
    let original = pki("cluster.local");
    let loaded = TrustAnchor::from_pem(
        &original.anchor.certificate_pem(),
        &original.anchor.key_pem(),
    )
    .unwrap();
    let issuer = loaded.generate_issuer(SystemTime::now()).unwrap();
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let key = LeafKey::generate().unwrap();
    let issued = issuer
        .issue(
            key.public_key(),
            &web,
            DEFAULT_LEAF_LIFETIME,
            SystemTime::now(),
        )
        .unwrap();
    verify_peer(&original.anchors, &issued.chain, &web, SystemTime::now()).unwrap();
    // Another anchor's key does not go with this certificate.
    let other = pki("cluster.local");
    let mismatch =
        TrustAnchor::from_pem(&original.anchor.certificate_pem(), &other.anchor.key_pem());
    assert!(mismatch.is_err());
}
