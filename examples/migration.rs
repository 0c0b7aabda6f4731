//! Connection migration: the client moves to a new UDP socket in the middle of a download.
//!
//! Starts a quiclab server on loopback, downloads 20 MB over HTTP/3 and, after 2 MB, rebinds
//! the client's endpoint to a fresh local port. The transfer continues on the same connection;
//! the server logs `path_changed` and `/conn` counts the change.
//!
//! Run: `RUST_LOG=info cargo run --example migration`

use bytes::Bytes;
use http_body_util::BodyExt;
use quiclab::client::{self, Client, ClientOptions, HttpVersion, Target};
use quiclab::config::ServerConfig;
use quiclab::server::Server;
use quiclab::tls::Trust;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info")).init();
    let dir = std::env::temp_dir().join("quiclab-example-migration");
    let server = Server::start(ServerConfig::ephemeral(dir.join("certs"))).await?;
    let port = server.quic_addr().port();
    let opts = ClientOptions { trust: Trust::CaFile(dir.join("certs/ca.pem")), ..Default::default() };
    let client = Client::new(HttpVersion::H3, &opts)?;
    let target = Target::parse(&format!("https://localhost:{port}/bytes/20M"))?;
    let conn = client.connect(&target).await?;

    let resp = conn.send(client::request(&target, http::Method::GET, Bytes::new())?).await?;
    let mut body = resp.into_body();
    let (mut got, mut moved) = (0usize, false);
    while let Some(frame) = body.frame().await {
        got += frame.map_err(|e| anyhow::anyhow!(e))?.into_data().map(|d| d.len()).unwrap_or(0);
        if !moved && got >= 2 << 20 {
            client::rebind(&client, &conn)?;
            moved = true;
        }
    }
    println!("downloaded {got} bytes on one connection, moving once at 2 MiB");

    let info = Target::parse(&format!("https://localhost:{port}/conn"))?;
    let resp = conn.send(client::request(&info, http::Method::GET, Bytes::new())?).await?;
    let json = resp.into_body().collect().await.map_err(|e| anyhow::anyhow!(e))?.to_bytes();
    println!("/conn after the move: {}", String::from_utf8_lossy(&json));
    conn.close().await;
    server.shutdown().await;
    Ok(())
}
