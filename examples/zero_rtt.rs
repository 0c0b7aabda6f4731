//! 0-RTT resumption, end to end in one process.
//!
//! Starts a quiclab server on loopback, then makes three HTTP/3 connections with one client.
//! The first has nothing to resume; the next ones resume the previous session and send their
//! GET in 0-RTT early data. A POST in early data gets `425 Too Early` and is retried by the
//! client once the handshake is done (RFC 8470).
//!
//! Run: `cargo run --example zero_rtt`

use bytes::Bytes;
use quiclab::client::{self, Client, ClientOptions, FetchOptions, HttpVersion, Target};
use quiclab::config::ServerConfig;
use quiclab::server::Server;
use quiclab::tls::Trust;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join("quiclab-example-0rtt");
    let server = Server::start(ServerConfig::ephemeral(dir.join("certs"))).await?;
    let port = server.quic_addr().port();
    let opts = ClientOptions { trust: Trust::CaFile(dir.join("certs/ca.pem")), ..Default::default() };
    let client = Client::new(HttpVersion::H3, &opts)?;
    let fetch = FetchOptions { zero_rtt: true, rebind_after: None };

    for (i, (method, path)) in [("GET", "/conn"), ("GET", "/conn"), ("POST", "/echo")].into_iter().enumerate() {
        let target = Target::parse(&format!("https://localhost:{port}{path}"))?;
        let req = client::request(&target, method.parse()?, Bytes::from_static(b"hello"))?;
        let f = client::fetch_with(&client, &target, req, &fetch).await?;
        let early = f.response.headers().contains_key(quiclab::web::EARLY_DATA_HEADER);
        println!(
            "connection {}: {method} {path}: 0-RTT {}, status {}, server saw early data: {early}, ttfb {:.2} ms",
            i + 1,
            f.zero_rtt.map(|z| z.to_string()).unwrap_or_default(),
            f.response.status(),
            f.timings.ttfb.as_secs_f64() * 1000.0,
        );
    }
    server.shutdown().await;
    Ok(())
}
