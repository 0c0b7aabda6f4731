//! quiclab: a QUIC / HTTP/3 experimentation server.
//!
//! One quinn endpoint serves the test site over HTTP/3; beside it the same site is served over
//! HTTP/2 and HTTP/1.1 on TLS/TCP, the baseline every experiment compares against.
//!
//! # Layout
//!
//! | module | what it holds |
//! |--------|---------------|
//! | `main.rs`, `cli/` | the binary, not part of this library: the command-line parser, signal handling, and the code that runs each command on this library's plain parameter structs |
//! | [`config`] | every tunable knob, its default and the reason for it |
//! | [`tls`] | development certificates (rcgen), client certificates (verify, present, issue), rustls configs for QUIC and TCP, `SSLKEYLOGFILE` |
//! | [`quic`] | the quinn endpoint, transport parameters, accept loop dispatching by ALPN to registered services |
//! | [`tcp`] | TCP listening sockets and the TLS/TCP listener handing connections to one service |
//! | [`server`] | starts the listeners from one [`config::ServerConfig`], registers the services by ALPN; graceful shutdown |
//! | [`web`] | the test site: one transport-independent service; [`web::h3`] and [`web::h2`] adapt it |
//! | [`conn`] | per-connection and per-request facts every service is handed (protocol, addresses, path, 0-RTT) |
//! | [`stats`] | kernel TCP statistics (`TCP_INFO`, `TCP_CONGESTION`) |
//! | [`client`] | HTTP/3 and HTTP/2 clients with timings, for `get`, tests, lab and benchmarks |
//! | [`mqtt`] | the MQTT broker: the sans-IO core (crate `mqtt_core`, re-exported), TCP/TLS and QUIC transports (the stream mapping of docs/mqtt-over-quic.md), client, password files and ACLs in mosquitto's formats (the load generator against mosquitto is `benches/mqtt.rs`) |
//! | [`lab`] | the emulated link (TUN relay between two network namespaces), self-check, report kit |
//! | `fuzzing` | entry points of the fuzz targets in `fuzz/` and their regression tests (`#[doc(hidden)]`; not a stable API) |
//!
//! # Rules
//!
//! * One [`web::Site`] serves HTTP/3 and HTTP/2 alike: a comparison is only fair when everything
//!   but the transport is the same code.
//! * A peer's bad input becomes the protocol's own error and a log line, never a panic.

pub mod client;
pub mod config;
pub mod conn;
#[doc(hidden)]
pub mod fuzzing;
pub mod lab;
pub mod mqtt;
pub mod quic;
pub mod server;
pub mod stats;
pub mod tcp;
pub mod tls;
pub mod web;
