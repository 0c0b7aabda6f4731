//! The command line of the `quiclab` binary (not part of the library): clap types for every
//! subcommand, signal handling, and the code that runs each command on the library's plain
//! parameter structs.
//!
//! | module | what it holds |
//! |--------|---------------|
//! | this one | [`Cli`], [`Command`], [`run`]; the argument groups several commands share ([`CertArgs`], [`TransportArgs`]); the client trust choice ([`client_trust`]); [`CliError`] |
//! | [`serve`] | `quiclab serve` |
//! | [`get`] | `quiclab get` |
//! | [`certs`] | `quiclab certs` |
//! | [`mqtt`] | `quiclab mqtt pub`, `sub`, `broker`, `passwd`, and the MQTT flags of `serve` |
//! | [`lab`] | `quiclab lab link`, `hol`, `handshake`, `migrate`, `flow` |
//! | [`signal`] | SIGINT and SIGTERM, the only signal handling in the program |

mod certs;
mod get;
mod lab;
mod mqtt;
mod mqtt5;
mod serve;
mod signal;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use quiclab::client::ClientError;
use quiclab::config::{self, parse_duration, parse_size, Congestion};
use quiclab::lab::LabError;
use quiclab::mqtt::MqttError;
use quiclab::server::ServerError;
use quiclab::tls::{TlsError, Trust};

/// quiclab: a QUIC / HTTP/3 experimentation server, with HTTP/2 over TLS/TCP beside it.
#[derive(Debug, Parser)]
#[command(name = "quiclab", version, about, long_about = None, propagate_version = true)]
#[command(after_help = "Logging: set RUST_LOG (e.g. RUST_LOG=debug or RUST_LOG=quiclab=trace); default is info.\n\
                        SSLKEYLOGFILE=FILE writes TLS secrets of every QUIC and TLS/TCP connection for Wireshark/tshark.")]
pub(crate) struct Cli {
    /// Worker threads of the async runtime (default: every core this process may run on, as
    /// `sched_getaffinity` reports them). `--threads 1` with `taskset -c 0` is the one-core
    /// set-up of the per-CPU-second benchmarks (docs/BENCHMARKS.md).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) threads: Option<u16>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// The runtime's worker threads: `--threads`, or every core available to the process.
    pub(crate) fn worker_threads(&self) -> usize {
        match self.threads {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub(crate) enum Command {
    /// Serve the test site over HTTP/3 (UDP) and HTTP/2 + HTTP/1.1 over TLS (TCP).
    Serve(serve::ServeArgs),
    /// Fetch a URL over HTTP/3 (default) or HTTP/2, and time it.
    Get(get::GetArgs),
    /// Create (if missing) and show the development certificates, with ready-to-paste client
    /// command lines; `--client NAME` issues a client certificate for MQTT.
    Certs(certs::CertsArgs),
    /// MQTT: publish, subscribe, run the broker alone, or manage a password file.
    #[command(subcommand)]
    Mqtt(mqtt::MqttCommand),
    /// Experiments over an emulated lossy, delayed link (network namespaces joined by quiclab's
    /// relay): link, hol, handshake, migrate, flow.
    #[command(subcommand)]
    Lab(lab::LabCommand),
}

impl Command {
    /// Whether this is a `quiclab lab` command (which needs network namespaces).
    pub(crate) fn is_lab(&self) -> bool {
        matches!(self, Command::Lab(_))
    }
}

/// Where certificates come from (shared by `serve` and `certs`).
#[derive(Debug, Args)]
pub(crate) struct CertArgs {
    /// Directory of the development certificates (created on first start: ca.pem, cert.pem,
    /// key.pem, ca-key.pem).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub(crate) certs: PathBuf,
    /// Serve this PEM certificate chain instead of the development leaf (needs --key).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub(crate) key: Option<PathBuf>,
}

/// QUIC transport parameters (HTTP/2 windows and stream limit follow them for a fair comparison).
#[derive(Debug, Args)]
pub(crate) struct TransportArgs {
    /// Congestion controller for QUIC: cubic, newreno or bbr.
    #[arg(long, value_name = "CC", default_value = "cubic")]
    pub(crate) congestion: Congestion,
    /// Per-stream receive window (also HTTP/2's initial stream window).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1250000")]
    pub(crate) stream_window: u64,
    /// Connection receive window (also HTTP/2's connection window).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16M")]
    pub(crate) conn_window: u64,
    /// Concurrent bidirectional streams a client may open (also HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) max_streams: u32,
    /// Concurrent unidirectional streams a peer may open (HTTP/3 needs 3).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) max_uni_streams: u32,
    /// QUIC idle timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub(crate) idle_timeout: Duration,
    /// RTT assumed before the first measurement (RFC 9002 §6.2.2).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "333ms")]
    pub(crate) initial_rtt: Duration,
}

impl TransportArgs {
    pub(crate) fn to_config(&self) -> config::TransportConfig {
        config::TransportConfig {
            congestion: self.congestion,
            stream_window: self.stream_window,
            conn_window: self.conn_window,
            max_streams: self.max_streams,
            max_uni_streams: self.max_uni_streams,
            keep_alive: None,
            idle_timeout: self.idle_timeout,
            initial_rtt: self.initial_rtt,
            initial_window: None,
        }
    }
}

/// Which certificates a client (`get`, `mqtt pub`, `mqtt sub`) trusts: none checked with
/// `--insecure`; the CA file given with `--cacert`; else the development CA `certs/ca.pem` when
/// it exists (what `quiclab serve` creates in the current directory); else the Mozilla roots.
pub(crate) async fn client_trust(insecure: bool, cacert: Option<&Path>) -> Trust {
    const DEV_CA: &str = "certs/ca.pem";
    if insecure {
        Trust::Insecure
    } else if let Some(ca) = cacert {
        Trust::CaFile(ca.to_path_buf())
    } else if tokio::fs::try_exists(DEV_CA).await.unwrap_or(false) {
        Trust::CaFile(PathBuf::from(DEV_CA))
    } else {
        Trust::WebPki
    }
}

/// What can make a command fail. Each variant's message says what failed; its cause, if any, is
/// the error's `source()`, which `main` prints after it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The server could not start (`serve`).
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A request failed (`get`).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Certificates could not be created, loaded or issued (`certs`, `serve`, `mqtt broker`).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An MQTT client or the broker failed (`mqtt ...`, the MQTT flags of `serve`).
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// `mqtt broker` could not bind a TCP or TLS listener or open its store.
    #[error(transparent)]
    MqttStart(#[from] quiclab::mqtt::tcp::StartError),
    /// An experiment failed (`lab ...`).
    #[error(transparent)]
    Lab(#[from] LabError),
    /// An input file named on the command line could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An output file named on the command line could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Work moved off the async threads (file reading) panicked.
    #[error("a blocking task failed")]
    Blocking(#[source] tokio::task::JoinError),
    /// Standard output could not be written.
    #[error("cannot write to standard output")]
    Stdout(#[source] std::io::Error),
    /// `get --0rtt` or `get --rebind-after` with `--http2`.
    #[error("--0rtt and --rebind-after need HTTP/3 (QUIC); drop --http2")]
    NeedsHttp3,
    /// `get`: the body ended before its Content-Length (RFC 9110 §8.6).
    #[error("body incomplete: {got} of {want} bytes")]
    BodyIncomplete {
        /// Bytes received.
        got: u64,
        /// The Content-Length.
        want: u64,
    },
    /// An `mqtt pub|sub` flag that the URL's transport cannot honour.
    #[error("{flag} needs an {needs} URL, not {url}")]
    UrlFlag {
        /// The flag (`--0rtt`, `--rebind-after`, `--cert`).
        flag: &'static str,
        /// The URL schemes it needs.
        needs: &'static str,
        /// The URL given.
        url: String,
    },
    /// A flag or `-D` property that cannot be used as given (MQTT 5 options without `-V 5`, a
    /// property in the wrong packet, ...); the message says which and why.
    #[error("{0}")]
    Usage(String),
    /// `mqtt pub` without `-m`, `-f` or `-n`.
    #[error("give a payload with -m TEXT, -f FILE or -n")]
    NoPayload,
    /// `mqtt sub`: the broker refused a filter (SUBACK 0x80).
    #[error("subscription to {0:?} refused by the broker")]
    SubscriptionRefused(String),
    /// `mqtt passwd`: the password could not be read from the terminal or stdin.
    #[error("cannot read the password")]
    PasswordInput(#[source] std::io::Error),
    /// `mqtt passwd`: the password was empty.
    #[error("empty password")]
    EmptyPassword,
    /// `mqtt passwd`: the two passwords typed differ.
    #[error("passwords do not match")]
    PasswordMismatch,
}

/// Worker threads of the runtime this runs on (printed in the banners, so a benchmark's log
/// says what it measured).
pub(crate) fn worker_threads_now() -> usize {
    tokio::runtime::Handle::current().metrics().num_workers()
}

/// Run a parsed command line; returns the process exit code.
pub(crate) async fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Get(args) => get::run(args).await,
        Command::Certs(args) => {
            tokio::task::spawn_blocking(move || certs::run(&args)).await.map_err(CliError::Blocking)?
        }
        Command::Mqtt(cmd) => mqtt::run(cmd).await,
        Command::Lab(cmd) => lab::run(cmd).await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use quiclab::client::RebindAfter;

    use super::{Cli, Command};

    #[test]
    fn rebind_after_parses_counts_and_times() {
        let ok = [
            ("0", RebindAfter::Count(0)),
            ("5", RebindAfter::Count(5)),
            ("64k", RebindAfter::Count(64 << 10)),
            ("5M", RebindAfter::Count(5 << 20)),
            (" 1G ", RebindAfter::Count(1 << 30)),
            ("200ms", RebindAfter::Time(Duration::from_millis(200))),
            ("2s", RebindAfter::Time(Duration::from_secs(2))),
            ("1.5s", RebindAfter::Time(Duration::from_millis(1500))),
        ];
        for (text, want) in ok {
            assert_eq!(text.parse::<RebindAfter>(), Ok(want), "{text:?}");
        }
        for bad in ["", "s", "ms", "xs", "-1", "1.5", "2min", "64kb", "1h"] {
            let e = bad.parse::<RebindAfter>().expect_err(bad);
            assert!(e.to_string().contains("give a count"), "{bad:?}: {e}");
        }
    }

    /// `get` and `mqtt pub|sub` take `--rebind-after` through the one parser.
    #[test]
    fn get_and_mqtt_share_the_rebind_after_syntax() {
        let get = Cli::try_parse_from(["quiclab", "get", "--rebind-after", "64k", "https://localhost/"]).unwrap();
        let Command::Get(g) = get.command else { panic!("not get") };
        assert_eq!(g.rebind_after, Some(RebindAfter::Count(64 << 10)));
        let publ =
            Cli::try_parse_from(["quiclab", "mqtt", "pub", "-t", "t", "-m", "m", "--rebind-after", "2s"]).unwrap();
        let Command::Mqtt(super::mqtt::MqttCommand::Pub(p)) = publ.command else { panic!("not mqtt pub") };
        assert_eq!(p.conn.rebind_after, Some(RebindAfter::Time(Duration::from_secs(2))));
        let sub = Cli::try_parse_from(["quiclab", "mqtt", "sub", "-t", "t", "--rebind-after", "10"]).unwrap();
        let Command::Mqtt(super::mqtt::MqttCommand::Sub(s)) = sub.command else { panic!("not mqtt sub") };
        assert_eq!(s.conn.rebind_after, Some(RebindAfter::Count(10)));
        assert!(Cli::try_parse_from(["quiclab", "get", "--rebind-after", "soon", "https://localhost/"]).is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
