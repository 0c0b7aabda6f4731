//! The `quiclab` binary: parse the command line, set up logging, run the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = quiclab::cli::Cli::parse();
    // The lab needs network namespaces: when not root, re-run inside a user + network namespace
    // (before any thread exists).
    if let Err(e) = quiclab::lab::prepare_process(matches!(cli.command, quiclab::cli::Command::Lab(_))) {
        eprintln!("quiclab: error: {e}");
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quiclab: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<i32> = runtime.block_on(quiclab::cli::run(cli)).map_err(anyhow::Error::from);
    match result {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            // One line: the error and its causes, skipping causes its message already spells out.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !line.contains(&c) {
                    line = format!("{line}: {c}");
                }
            }
            eprintln!("quiclab: error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}
