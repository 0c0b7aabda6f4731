//! quiclab: a QUIC / HTTP/3 experimentation server.
//!
//! One quinn endpoint serves the test site over HTTP/3; beside it the same site is served over
//! HTTP/2 and HTTP/1.1 on TLS/TCP, the baseline every experiment compares against.
//!
//! # Layout
//!
//! The library, by layer (lowest last; a module imports only from its own layer and below, never
//! in a cycle: docs/ARCHITECTURE.md, checked by `tests/layout.rs`):
//!
//! | layer | module | what it holds |
//! |-------|--------|---------------|
//! | binary | `main.rs`, `cli/` | not part of this library: clap types (one file per subcommand), the one signal handler, exit codes; it runs each command on this library's plain parameter structs |
//! | experiments | [`lab`] | the emulated link (TUN relay between two network namespaces), self-check, the five experiments, the report kit (also used by `benches/`) |
//! | | `fuzzing` | entry points of the fuzz targets in `fuzz/` and their regression tests (`#[doc(hidden)]`; not a stable API) |
//! | server | [`server`] | starts the listeners from one [`config::ServerConfig`], registers the services by ALPN; graceful shutdown |
//! | protocols | [`web`] | the test site: one transport-independent service, adapted to HTTP/3 (`web::h3`) and HTTP/2 and HTTP/1.1 (`web::h2`), plus WebSockets on the TLS/TCP listener (`web::ws`: echo, MQTT over WebSocket); httpbin-compatible endpoints (`web::httpbin`), content coding (`web::coding`) and the session demo (`web::session`) |
//! | | [`client`] | HTTP/3 and HTTP/2 clients with timings, for `get`, tests, lab and benchmarks |
//! | | [`mqtt`] | the MQTT transports around the sans-IO core (TCP, TLS, the QUIC stream mapping of docs/mqtt-over-quic.md), the driver, the client; the core's modules re-exported |
//! | transports | [`quic`] | the quinn endpoint, transport parameters, the accept loop handing each connection to the service registered for its ALPN |
//! | | `tcp` | TCP listening sockets, the TLS/TCP listener handing connections to one service |
//! | plumbing | [`config`] | every tunable knob, its default and the reason for it |
//! | | [`tls`] | development certificates (rcgen), client certificates (verify, present, issue), rustls configs for QUIC and TCP, `SSLKEYLOGFILE` |
//! | | [`conn`] | per-connection and per-request facts every service is handed (protocol, addresses, path, 0-RTT, handshake done) |
//! | | `stats` | kernel TCP statistics (`TCP_INFO`, `TCP_CONGESTION`) |
//! | core | `mqtt_core` (crates/mqtt-core) | sans-IO MQTT: codec, topic tries, sessions, the broker state machine, password files, ACLs; no tokio, no sockets, no clock |
//!
//! Modules are private unless the examples, tests or benches need them; the MQTT load generator is
//! `benches/mqtt.rs`, sharing `tests/common/` with the tests.
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
pub(crate) mod stats;
pub(crate) mod tcp;
pub mod tls;
pub mod web;
