//! `quiclab get`: fetch a URL over HTTP/3 or HTTP/2, with timings, 0-RTT and migration.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;

use quiclab::client::{self, ClientOptions, HttpVersion, RebindAfter, Target};
use quiclab::config::parse_duration;

use super::{client_trust, CliError, TransportArgs};

/// `quiclab get`.
#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The https:// URL to fetch.
    pub(crate) url: String,
    /// Use HTTP/2 over TLS/TCP (the baseline) instead of HTTP/3.
    #[arg(long)]
    pub(crate) http2: bool,
    /// Write the body to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Print the response status line and headers before the body.
    #[arg(short = 'i', long)]
    pub(crate) include: bool,
    /// Print a timing line to standard error: handshake, time to first byte, total (all from the
    /// start of the connection attempt), bytes, negotiated protocol.
    #[arg(short, long)]
    pub(crate) verbose: bool,
    /// Trust the CA certificate(s) in FILE (default: certs/ca.pem if it exists, plus the
    /// Mozilla roots).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub(crate) cacert: Option<PathBuf>,
    /// Do not verify the server's certificate chain or name.
    #[arg(short = 'k', long)]
    pub(crate) insecure: bool,
    /// Request method.
    #[arg(short = 'X', long, value_name = "METHOD", default_value = "GET")]
    pub(crate) method: http::Method,
    /// TCP congestion control for --http2 (TCP_CONGESTION, e.g. cubic or reno); default: the kernel's.
    #[arg(long, value_name = "NAME")]
    pub(crate) tcp_congestion: Option<String>,
    /// Connect to ADDR (IP:PORT) instead of resolving the URL's host, which still names the
    /// server for SNI and certificate checks (e.g. --connect-to $QUICLAB_SERVER:4433 in the lab).
    #[arg(long, value_name = "ADDR")]
    pub(crate) connect_to: Option<std::net::SocketAddr>,
    /// Give up if no connection is established within this time.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub(crate) connect_timeout: Duration,
    /// Make N connections one after another in this process, one request each; later ones
    /// resume the TLS session of the one before (rustls keeps tickets in memory only).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) repeat: u32,
    /// Send the request in 0-RTT early data when a session can be resumed (HTTP/3; use with
    /// --repeat). Prints per connection `0-RTT: accepted`, `rejected` or `not attempted`.
    #[arg(long = "0rtt")]
    pub(crate) zero_rtt: bool,
    /// Move to a new local UDP socket during the download (connection migration): after N
    /// body bytes (a count with an optional k, M or G suffix: `65536`, `64k`, `5M`) or after a
    /// time since the request was sent (ending in ms or s: `200ms`, `1.5s`). HTTP/3 only.
    #[arg(long, value_name = "N|TIME")]
    pub(crate) rebind_after: Option<RebindAfter>,
    #[command(flatten)]
    pub(crate) transport: TransportArgs,
    /// Request body (e.g. for /echo); `@FILE` reads it from a file.
    #[arg(short = 'd', long, value_name = "DATA")]
    pub(crate) data: Option<String>,
}

/// `quiclab get`: fetch, print, time.
pub(crate) async fn run(args: GetArgs) -> Result<i32, CliError> {
    let trust = client_trust(args.insecure, args.cacert.as_deref()).await;
    let version = if args.http2 { HttpVersion::H2 } else { HttpVersion::H3 };
    if args.http2 && (args.zero_rtt || args.rebind_after.is_some()) {
        return Err(CliError::NeedsHttp3);
    }
    let opts = ClientOptions {
        trust,
        connect_timeout: args.connect_timeout,
        transport: args.transport.to_config(),
        tcp_congestion: args.tcp_congestion.clone(),
    };
    let mut target = Target::parse(&args.url)?;
    if let Some(addr) = args.connect_to {
        target = target.with_addr(addr);
    }
    let body = match &args.data {
        None => Bytes::new(),
        Some(d) => match d.strip_prefix('@') {
            Some(path) => {
                tokio::fs::read(path).await.map_err(|source| CliError::Read { path: path.into(), source })?.into()
            }
            None => Bytes::from(d.clone()),
        },
    };
    let client = client::Client::new(version, &opts)?;
    let fetch_opts = client::FetchOptions { zero_rtt: args.zero_rtt, rebind_after: args.rebind_after };
    let mut last = None;
    for i in 1..=args.repeat.max(1) {
        let req = client::request(&target, args.method.clone(), body.clone())?;
        let fetched = client::fetch_with(&client, &target, req, &fetch_opts).await?;
        // A body shorter than its Content-Length was cut off (RFC 9110 §8.6).
        if let Some(len) = fetched.response.headers().get(http::header::CONTENT_LENGTH) {
            let want: Option<u64> = len.to_str().ok().and_then(|v| v.parse().ok());
            if fetched.response.status() != http::StatusCode::NOT_MODIFIED
                && args.method != http::Method::HEAD
                && want.is_some_and(|w| w != fetched.body.len() as u64)
            {
                return Err(CliError::BodyIncomplete { got: fetched.body.len() as u64, want: want.unwrap_or(0) });
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        if let Some(z) = fetched.zero_rtt {
            let early = fetched.response.headers().contains_key(quiclab::web::EARLY_DATA_HEADER);
            eprintln!(
                "connection {i}: 0-RTT: {z}  ttfb={:.2}ms  status={}{}",
                ms(fetched.timings.ttfb),
                fetched.response.status().as_u16(),
                if early { "  (server: arrived in early data)" } else { "" }
            );
        } else if args.repeat > 1 {
            eprintln!(
                "connection {i}: ttfb={:.2}ms  status={}",
                ms(fetched.timings.ttfb),
                fetched.response.status().as_u16()
            );
        }
        if fetched.rebound {
            eprintln!(
                "connection {i}: moved to a new local socket during the download; body complete ({} bytes)",
                fetched.body.len()
            );
        }
        if args.verbose {
            eprintln!("{}", fetched.timing_line());
        }
        last = Some(fetched);
    }
    let Some(fetched) = last else { return Ok(0) };
    if let Some(path) = &args.output {
        tokio::fs::write(path, &fetched.body).await.map_err(|source| CliError::Write { path: path.clone(), source })?;
    }
    let mut out = std::io::stdout().lock();
    let mut print = || -> std::io::Result<()> {
        if args.include {
            let r = &fetched.response;
            writeln!(out, "{} {}", fetched.protocol, r.status())?;
            for (k, v) in r.headers() {
                writeln!(out, "{}: {}", k, String::from_utf8_lossy(v.as_bytes()))?;
            }
            writeln!(out)?;
        }
        if args.output.is_none() {
            out.write_all(&fetched.body)?;
        }
        out.flush()
    };
    print().map_err(CliError::Stdout)?;
    Ok(0)
}
