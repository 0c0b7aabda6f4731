//! Network namespaces held by file descriptors, the threads and processes that run inside them,
//! and rootless mode (a user + network namespace the process enters by re-executing itself).
//!
//! A namespace is created on a throwaway thread (`unshare(CLONE_NEWNET)` changes only the calling
//! thread) and kept alive by an open `/proc/thread-self/ns/net` descriptor. Nothing is named or
//! mounted, so when the process ends, however it ends, the kernel frees the namespaces and the
//! devices inside them. Code runs inside a namespace on a dedicated OS thread that `setns`es
//! first ([`NetNs::spawn`]); sockets and devices belong to the namespace of the thread that
//! creates them. Never `setns` a thread you do not own (a tokio worker, say): everything it
//! creates afterwards would land in the wrong namespace.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;

use super::LabError;

/// A network namespace, alive as long as this value (and any thread or process inside it).
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    inode: u64,
    label: &'static str,
}

/// A thread running inside a namespace; [`NsThread::join`] waits for its result.
#[derive(Debug)]
pub struct NsThread<T> {
    handle: JoinHandle<Option<T>>,
}

impl<T> NsThread<T> {
    /// Wait for the thread; a panic inside it is resumed here.
    pub fn join(self) -> T {
        match self.handle.join() {
            Ok(Some(v)) => v,
            Ok(None) => unreachable!("the thread entered its namespace before running"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn ns_error(what: &'static str) -> impl FnOnce(io::Error) -> LabError {
    move |source| LabError::Namespace { what, source }
}

impl NetNs {
    /// Create a new, empty network namespace (only a down loopback device in it) and run
    /// `setup` inside it before returning, on the same throwaway thread.
    pub(crate) fn create_with<R: Send + 'static>(
        label: &'static str,
        setup: impl FnOnce() -> io::Result<R> + Send + 'static,
    ) -> Result<(NetNs, R), LabError> {
        let t = std::thread::Builder::new()
            .name(format!("netns-{label}"))
            .spawn(move || -> Result<(OwnedFd, u64, R), LabError> {
                // SAFETY: unshare only changes this thread's namespaces.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(ns_error("create a network namespace")(io::Error::last_os_error()));
                }
                let fd = open_ns_fd(c"/proc/thread-self/ns/net").map_err(ns_error("open the namespace"))?;
                let inode = fd_inode(&fd).map_err(ns_error("stat the namespace"))?;
                let r = setup().map_err(ns_error("set up the namespace"))?;
                Ok((fd, inode, r))
            })
            .map_err(ns_error("start a thread"))?;
        let (fd, inode, r) = match t.join() {
            Ok(r) => r?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        Ok((NetNs { fd, inode, label }, r))
    }

    /// The namespace's inode number: `ls -l /proc/PID/task/TID/ns/net` shows it as `net:[N]`.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// `net:[inode]`, as the kernel names it in `/proc`.
    pub fn id(&self) -> String {
        format!("net:[{}]", self.inode)
    }

    /// The label given at creation (`client`, `server`).
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// Run `f` on a new OS thread inside this namespace. The thread may build its own tokio
    /// runtime; threads it starts inherit the namespace. Returns once the thread has entered the
    /// namespace (or failed to).
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<NsThread<T>, LabError> {
        let fd = self.fd.try_clone().map_err(ns_error("duplicate the namespace fd"))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // SAFETY: setns with a namespace fd we own; it affects only this thread, which is ours.
                let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                drop(fd);
                if r != 0 {
                    let _ = tx.send(Err(io::Error::last_os_error()));
                    return None;
                }
                let _ = tx.send(Ok(()));
                Some(f())
            })
            .map_err(ns_error("start a thread"))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(NsThread { handle }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(ns_error("enter the namespace")(e))
            }
            Err(_) => Err(ns_error("enter the namespace")(io::Error::other("thread ended early"))),
        }
    }

    /// Run `f` inside this namespace on a new thread and wait for its result.
    pub(crate) fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, LabError> {
        Ok(self.spawn(&format!("in-{}", self.label), f)?.join())
    }

    /// Make `cmd` start inside this namespace, and die with the thread that spawns it
    /// (`PR_SET_PDEATHSIG`, SIGKILL). The kernel ties that signal to the spawning *thread*:
    /// spawn from a thread that lives as long as the child should (the main thread, say).
    pub fn prepare_command(&self, cmd: &mut Command) {
        let fd = self.fd.as_raw_fd();
        // SAFETY: getpid is always safe.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure calls only async-signal-safe functions (setns, prctl, getppid) and
        // allocates nothing; `fd` stays open until spawn returns because `self` is borrowed.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH)); // parent already gone
                }
                Ok(())
            });
        }
    }
}

fn open_ns_fd(path: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: path is NUL-terminated; the fd returned is owned by us.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fd_inode(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: fstat fills the zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_ino)
}

/// Environment variable marking the re-executed process in rootless mode.
pub(crate) const ROOTLESS_MARK: &str = "QUICLAB_LAB_USERNS";
/// Set to `1` to use rootless mode even when running as root (testing, or root without
/// `CAP_SYS_ADMIN`/`CAP_NET_ADMIN` is detected anyway).
pub(crate) const FORCE_ROOTLESS: &str = "QUICLAB_ROOTLESS";

/// Whether the process holds `CAP_SYS_ADMIN` and `CAP_NET_ADMIN` (bits 21 and 12 of `CapEff`).
fn has_namespace_caps() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 21) != 0 && caps & (1 << 12) != 0)
}

/// How the lab gets the privileges it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    /// Running as root with `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`.
    Root,
    /// Inside a user + network namespace of the process's own (rootless mode).
    Rootless,
}

/// The mode this process is in (after [`prepare_process`]).
pub(crate) fn privilege() -> Privilege {
    if std::env::var_os(ROOTLESS_MARK).is_some() {
        Privilege::Rootless
    } else {
        Privilege::Root
    }
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Make sure the lab can create namespaces: call once at the very start of `main`, before any
/// runtime exists, with `cmd_is_lab` true for lab commands (for others this does nothing).
///
/// * Root with `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`: nothing to do.
/// * Otherwise (rootless mode): re-execute this very program (`/proc/self/exe`, same arguments)
///   inside a new user + network namespace where it is root, like `unshare -rn`: the child
///   `unshare`s before `exec`, maps its own uid and gid to 0, and dies with this process
///   (`PR_SET_PDEATHSIG`). This process forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to it and
///   exits with its status; the call does not return here. In the child the call returns
///   `Ok(())` and the lab runs as root of its own namespaces, so the host network is never
///   touched. Re-executing (rather than `unshare` in place) works from a multi-threaded process
///   too, such as a test harness.
///
/// Fails with a clear message when neither way is possible (user namespaces disabled).
pub fn prepare_process(cmd_is_lab: bool) -> Result<(), LabError> {
    if !cmd_is_lab {
        return Ok(());
    }
    if std::env::var_os(ROOTLESS_MARK).is_some() {
        return if has_namespace_caps() {
            Ok(())
        } else {
            Err(LabError::Rootless {
                source: io::Error::other("the re-executed process has no capabilities in its user namespace"),
            })
        };
    }
    let forced = std::env::var(FORCE_ROOTLESS).is_ok_and(|v| v == "1");
    if !forced && has_namespace_caps() {
        return Ok(());
    }
    // SAFETY: getuid/getgid are always safe.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let uid_map = format!("0 {uid} 1\n").into_bytes();
    let gid_map = format!("0 {gid} 1\n").into_bytes();
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| OsString::from("quiclab"));
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(&argv0).args(args).env(ROOTLESS_MARK, "1");
    // SAFETY: getpid is always safe.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls (unshare, open, write, close, prctl, getppid) on
    // buffers prepared before fork; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0
                || libc::getppid() != parent
            {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            // user_namespaces(7): an unprivileged process must deny setgroups before it may
            // write its gid_map; it may map only its own ids.
            write_proc(c"/proc/self/setgroups", b"deny", true)?;
            write_proc(c"/proc/self/uid_map", &uid_map, false)?;
            write_proc(c"/proc/self/gid_map", &gid_map, false)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| LabError::Rootless { source })?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: installing a handler that only calls kill (async-signal-safe).
        unsafe { libc::signal(sig, forward_signal as *const () as libc::sighandler_t) };
    }
    let status = child.wait().map_err(|source| LabError::Rootless { source })?;
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    std::process::exit(code);
}

/// Write `data` to a `/proc` file between fork and exec (no allocation).
fn write_proc(path: &std::ffi::CStr, data: &[u8], missing_ok: bool) -> io::Result<()> {
    // SAFETY: path is NUL-terminated; the buffer is valid for its length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            let e = io::Error::last_os_error();
            return if missing_ok && e.raw_os_error() == Some(libc::ENOENT) { Ok(()) } else { Err(e) };
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let e = io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(e);
        }
    }
    Ok(())
}
