//! HTTP/1.1 upgrades (WebSocket) and `CONNECT` tunnels. They cannot ride the shared HTTP/2
//! connection between proxies as requests do, so each gets a connection of its own: the request
//! is sent as HTTP/1.1 on it (over an opaque mTLS stream to a peer, or TCP to the app or an
//! outside address), and once the far side agrees (`101`, or `2xx` to `CONNECT`) the two
//! upgraded connections are joined byte for byte.

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
    if request.method() == Method::CONNECT {
        return true;
    }
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
/// its own.
pub async fn forward<IO>(io: IO, mut request: Request<Incoming>) -> Response<Body>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
            if let Err(error) = copy_bidirectional(&mut client, &mut far).await {
                tracing::debug!(%error, "upgraded connection ended with an error");
            }
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
        assert!(!is_upgrade(&request("keep-alive")));
        let connect = Request::connect("example.com:443").body(()).unwrap();
        assert!(is_upgrade(&connect));
        let h2 = Request::get("/")
            .version(http::Version::HTTP_2)
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "upgrade")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&h2));
    }
}
