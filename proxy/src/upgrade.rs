//! HTTP/1.1 upgrades (WebSocket) and `CONNECT` tunnels. They cannot ride the shared HTTP/2
//! connection between proxies as requests do, so each gets a connection of its own: the request
//! is sent as HTTP/1.1 on it (over an opaque mTLS stream to a peer, or TCP to the app or an
//! outside address), and once the far side agrees (`101`, or `2xx` to `CONNECT`) the two
//! upgraded connections are joined byte for byte — for as long as the caller's `until` allows.
//!
//! Inside the mesh only WebSocket is relayed: any other upgrade (`h2c` above all) would give the
//! client a raw channel to the app past per-request authorization and identity stamping, so
//! those requests go on as plain requests with the upgrade offer removed, as RFC 9110 allows.

use std::future::Future;

use http::header::{CONNECTION, UPGRADE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};

use crate::http_util::{Body, boxed, error_response};

/// Whether `request` asks to leave HTTP: an HTTP/1.1 `Upgrade` (listed in `Connection`, as
/// RFC 9110 §7.8 requires) or a `CONNECT`.
pub fn is_upgrade<B>(request: &Request<B>) -> bool {
    if request.version() >= http::Version::HTTP_2 {
        return false;
    }
    request.method() == Method::CONNECT || upgrade_offered(request)
}

/// Whether `request` is an HTTP/1.1 WebSocket handshake: the one upgrade relayed in the mesh.
pub fn is_websocket<B>(request: &Request<B>) -> bool {
    request.version() < http::Version::HTTP_2
        && upgrade_offered(request)
        && request
            .headers()
            .get_all(UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
}

fn upgrade_offered<B>(request: &Request<B>) -> bool {
    request.headers().contains_key(UPGRADE)
        && request
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Sends `request` (an upgrade) as HTTP/1.1 over `io`, answers with the far side's response,
/// and, if it agreed, joins the client's upgraded connection to the far side's in a task of
/// its own, holding `hold` (a connection permit) until the tunnel ends: when either side
/// closes, or `until` completes (a deadline, a revoked authorization).
pub async fn forward<IO, H, U>(
    io: IO,
    mut request: Request<Incoming>,
    hold: H,
    until: U,
) -> Response<Body>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Send + 'static,
    U: Future<Output = ()> + Send + 'static,
{
    let client_side = hyper::upgrade::on(&mut request);
    let connect = request.method() == Method::CONNECT;
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
            Ok(handshake) => handshake,
            Err(error) => return bad_gateway(&error),
        };
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upgrade connection ended with an error");
        }
    });
    let (parts, body) = request.into_parts();
    let mut response = match sender
        .send_request(Request::from_parts(parts, boxed(body)))
        .await
    {
        Ok(response) => response,
        Err(error) => return bad_gateway(&error),
    };
    let agreed = response.status() == StatusCode::SWITCHING_PROTOCOLS
        || (connect && response.status().is_success());
    if agreed {
        let far_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (client, far) = match tokio::try_join!(client_side, far_side) {
                Ok(both) => both,
                Err(error) => {
                    tracing::debug!(%error, "upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut far) = (TokioIo::new(client), TokioIo::new(far));
            tokio::select! {
                copied = copy_bidirectional(&mut client, &mut far) => {
                    if let Err(error) = copied {
                        tracing::debug!(%error, "upgraded connection ended with an error");
                    }
                }
                () = until => tracing::debug!("upgraded connection ended: its time or authorization ran out"),
            }
            drop(hold);
        });
    }
    response.map(boxed)
}

fn bad_gateway(error: &hyper::Error) -> Response<Body> {
    tracing::debug!(%error, "upgrade request failed");
    error_response(
        StatusCode::BAD_GATEWAY,
        format!("upgrade request failed: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_must_be_named_in_connection() {
        let request = |connection: &str| {
            Request::get("/chat")
                .header(UPGRADE, "websocket")
                .header(CONNECTION, connection)
                .body(())
                .unwrap()
        };
        assert!(is_upgrade(&request("keep-alive, Upgrade")));
        assert!(is_websocket(&request("keep-alive, Upgrade")));
        assert!(!is_upgrade(&request("keep-alive")));
        let h2c = Request::get("/")
            .header(UPGRADE, "h2c")
            .header(CONNECTION, "Upgrade, HTTP2-Settings")
            .body(())
            .unwrap();
        assert!(is_upgrade(&h2c) && !is_websocket(&h2c));
        let connect = Request::connect("example.com:443").body(()).unwrap();
        assert!(is_upgrade(&connect) && !is_websocket(&connect));
        let h2 = Request::get("/")
            .version(http::Version::HTTP_2)
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "upgrade")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&h2));
    }
}
