//! A real WebSocket peer pair (tokio-tungstenite): an echo server that greets first, and a
//! client that exchanges messages with it, so both directions of an upgraded connection are
//! exercised.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// What the server sends before anything is asked of it.
pub const GREETING: &str = "welcome";

/// A WebSocket echo server; stops when dropped.
#[derive(Debug)]
pub struct WebSocketEcho {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for WebSocketEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves WebSocket on `bind`: greets each client with [`GREETING`], then echoes every text
/// message prefixed with "echo: ".
pub async fn start_websocket_echo(bind: &str) -> WebSocketEcho {
    let listener = TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                if socket.send(Message::text(GREETING)).await.is_err() {
                    return;
                }
                while let Some(Ok(message)) = socket.next().await {
                    let reply = match message {
                        Message::Text(text) => Message::text(format!("echo: {}", text.as_str())),
                        Message::Close(_) => return,
                        _ => continue,
                    };
                    if socket.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    WebSocketEcho { port, task }
}

/// Connects to `addr` as `ws://<host>/chat`, reads the greeting, sends each of `messages` and
/// reads its echo; every text received, in order.
pub async fn exchange(addr: std::net::SocketAddr, host: &str, messages: &[&str]) -> Vec<String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut socket, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("ws://{host}/chat"), tcp),
    )
    .await
    .expect("the WebSocket handshake completes")
    .expect("the WebSocket handshake succeeds");
    assert_eq!(response.status(), 101);
    let mut received = Vec::new();
    let next = async |socket: &mut tokio_tungstenite::WebSocketStream<TcpStream>| {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message")
            .expect("the stream is open")
            .expect("a well-formed message");
        message.into_text().unwrap().as_str().to_string()
    };
    received.push(next(&mut socket).await);
    for message in messages {
        socket.send(Message::text(*message)).await.unwrap();
        received.push(next(&mut socket).await);
    }
    let _ = socket.close(None).await;
    received
}
