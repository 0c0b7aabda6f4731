//! The `quiclab` binary: parse the command line ([`cli`]), set up logging, run the command on
//! the library, print an error and its causes.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // The lab needs network namespaces: when not root, re-run inside a user + network namespace
    // (before any thread exists).
    if let Err(e) = quiclab::lab::prepare_process(cli.command.is_lab()) {
        eprintln!("quiclab: error: {}", error_line(&e));
        return std::process::ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let threads = cli.worker_threads();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quiclab: error: cannot start the async runtime: {}", error_line(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::debug!(threads, "async runtime started");
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("quiclab: error: {}", error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// One line: the error, then each cause in its `source()` chain, joined by ": ". Every error
/// type prints its own message only and leaves its cause to this chain.
fn error_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}
