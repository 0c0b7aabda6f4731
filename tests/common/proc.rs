//! Server processes for the integration tests and the benchmarks (`benches/mqtt.rs` includes this
//! file with `#[path = "../tests/common/proc.rs"]`): loopback ports, starting a child server and
//! waiting until it accepts connections, its CPU time and resident memory from `/proc`, and a
//! stop that never leaves a process behind.
//!
//! * **Readiness** is decided by connecting ([`tcp_accepts`], [`mqtt_accepts`]), never by reading
//!   what the child prints: [`spawn_ready`] retries the probe until it succeeds, the child exits,
//!   or a deadline passes.
//! * **Ports.** A child told to listen on port 0 could only tell us its port in its log text,
//!   which readiness must not depend on. So the port is picked here, by binding port 0 and
//!   closing the socket again ([`free_tcp_port`], [`free_udp_port`]). That is racy: another
//!   process may take the port between our pick and the child's bind. [`spawn_ready`] covers the
//!   race: when the child exits before it is ready (a failed bind ends both quiclab and
//!   mosquitto), it is started again on freshly picked ports, up to [`ATTEMPTS`] times.
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use quiclab::mqtt::client::{Client, ClientOptions, MqttUrl};
use quiclab::tls::Trust;

/// How many times [`spawn_ready`] starts a child whose ports were taken under it.
pub const ATTEMPTS: usize = 3;

/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// Why a child server could not be started, or measured.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// No free loopback port could be picked.
    #[error("cannot pick a free loopback port")]
    Port(#[source] io::Error),
    /// The program could not be started.
    #[error("cannot start {what}")]
    Spawn {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The child's state could not be queried.
    #[error("cannot wait for {what}")]
    Wait {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The child exited before it accepted a connection, on every attempt.
    #[error("{what} exited before it was ready ({status}; {attempts} attempts)")]
    Exited { what: String, status: ExitStatus, attempts: usize },
    /// The child was still running but did not accept a connection in time.
    #[error("{what} did not accept connections within {timeout:?}")]
    NotReady { what: String, timeout: Duration },
    /// A `/proc` file could not be read.
    #[error("cannot read {path}")]
    ProcRead {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A `/proc` file lacks a field it always has on Linux.
    #[error("{path} has no {field}")]
    ProcField { path: String, field: &'static str },
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A TCP port on 127.0.0.1 that was free a moment ago (see the module doc for the race).
pub fn free_tcp_port() -> Result<u16, ProcError> {
    let l = TcpListener::bind(loopback(0)).map_err(ProcError::Port)?;
    Ok(l.local_addr().map_err(ProcError::Port)?.port())
}

/// A UDP port on 127.0.0.1 that was free a moment ago (see the module doc for the race).
pub fn free_udp_port() -> Result<u16, ProcError> {
    let s = UdpSocket::bind(loopback(0)).map_err(ProcError::Port)?;
    Ok(s.local_addr().map_err(ProcError::Port)?.port())
}

/// Whether a TCP connection to `addr` is accepted within a second.
pub async fn tcp_accepts(addr: SocketAddr) -> bool {
    matches!(tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// Whether an MQTT broker at `url` answers a CONNECT (clean session, client id
/// `readiness-probe`) with an accepting CONNACK within a second; the probe then disconnects.
pub async fn mqtt_accepts(url: &MqttUrl, trust: &Trust) -> bool {
    let opts = ClientOptions {
        client_id: "readiness-probe".into(),
        trust: trust.clone(),
        connect_timeout: Duration::from_secs(1),
        ..ClientOptions::default()
    };
    match Client::connect(url, &opts).await {
        Ok(c) => {
            let _ = c.disconnect().await;
            true
        }
        Err(_) => false,
    }
}

/// A child server process, killed (and reaped) when dropped.
pub struct ChildServer {
    what: String,
    child: Child,
}

impl ChildServer {
    /// What the child is, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stop the child with SIGTERM (its graceful shutdown) and wait up to `timeout` for it to
    /// exit; its exit status, or `None` if it is still running then (it is killed on drop).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        // SAFETY: kill(2) on the PID of a child this struct owns and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident set size (`VmRSS` of `/proc/PID/status`), KiB.
    pub fn rss_kib(&self) -> Result<u64, ProcError> {
        proc_rss_kib(self.pid())
    }

    /// User + system CPU seconds of the child, all its threads.
    pub fn cpu_seconds(&self) -> Result<f64, ProcError> {
        proc_cpu_seconds(self.pid())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        // SIGKILL and reap: immediate, so dropping never blocks an async thread for long.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a child server with `spawn` (which picks its ports and returns them with the child),
/// then probe it with `ready` until the probe succeeds (`Ok`), the child exits, or `timeout`
/// passes. A child that exits before it is ready is started again on new ports, up to
/// [`ATTEMPTS`] times (the free-port race of the module doc).
pub async fn spawn_ready<T, S, R, F>(
    what: &str,
    timeout: Duration,
    mut spawn: S,
    mut ready: R,
) -> Result<(ChildServer, T), ProcError>
where
    T: Clone,
    S: FnMut() -> Result<(Child, T), ProcError>,
    R: FnMut(T) -> F,
    F: Future<Output = bool>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (child, ports) = spawn()?;
        let mut server = ChildServer { what: what.to_string(), child };
        let deadline = Instant::now() + timeout;
        let exited = loop {
            if ready(ports.clone()).await {
                return Ok((server, ports));
            }
            match server.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(source) => return Err(ProcError::Wait { what: what.to_string(), source }),
            }
            if Instant::now() >= deadline {
                return Err(ProcError::NotReady { what: what.to_string(), timeout });
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        };
        if attempt >= ATTEMPTS {
            return Err(ProcError::Exited { what: what.to_string(), status: exited, attempts: attempt });
        }
    }
}

/// Resident set size of a process, KiB (`VmRSS` of `/proc/PID/status`).
pub fn proc_rss_kib(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|source| ProcError::ProcRead { path: path.clone(), source })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or(ProcError::ProcField { path, field: "VmRSS" })
}

/// User + system CPU seconds of a process, all its threads (`/proc/PID/stat`).
pub fn proc_cpu_seconds(pid: u32) -> Result<f64, ProcError> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|source| ProcError::ProcRead { path: path.clone(), source })?;
    // The command name may contain spaces: fields start after the last ')'. After it, state is
    // field 3 of proc(5); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let field = |i: usize, name: &'static str| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| ProcError::ProcField { path: path.clone(), field: name })
    };
    let (utime, stime) = (field(11, "utime")?, field(12, "stime")?);
    Ok((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

// ---------------------------------------------------------------------------------------------
// Pinning: the benchmarks give the server and the load generator a core each.

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit set; all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: the callers check `cpu` against the number of CPUs (far below CPU_SETSIZE).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Pin the calling thread to `cpus` (all of the machine's cores to undo a pinning).
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the given size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Start `cmd` pinned to `cpu` (if any), killed when this process dies.
pub fn spawn_pinned(mut cmd: Command, cpu: Option<usize>, what: &str) -> Result<Child, ProcError> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls (sched_setaffinity, prctl).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(cpu) = cpu {
                let set = cpu_set(&[cpu]);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The server dies with the benchmark, whatever happens to it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| ProcError::Spawn { what: what.to_string(), source })
}
