//! SIGINT and SIGTERM: the one place the program handles signals. The library never installs a
//! handler; commands that stop on a signal hand it a future built from [`Signals`].

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT and SIGTERM, caught from the moment this is created (so a signal that arrives while a
/// command starts up is kept until [`Signals::recv`] asks for it).
pub(crate) struct Signals {
    int: Option<Signal>,
    term: Option<Signal>,
}

impl Signals {
    /// Catch SIGINT and SIGTERM from now on. Needs a Tokio runtime. A handler that cannot be
    /// installed is never reported (its signal then keeps its default action).
    pub(crate) fn catch() -> Signals {
        Signals { int: signal(SignalKind::interrupt()).ok(), term: signal(SignalKind::terminate()).ok() }
    }

    /// The next SIGINT or SIGTERM: its number.
    pub(crate) async fn recv(&mut self) -> i32 {
        let int = async {
            match self.int.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let term = async {
            match self.term.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = int => libc::SIGINT,
            _ = term => libc::SIGTERM,
        }
    }
}
