//! TUN devices, opened and configured with plain ioctls (Linux `Documentation/networking/tuntap`).
//!
//! A device is created in the network namespace of the thread that opens `/dev/net/tun`, and
//! lives until its descriptor is closed (no `TUNSETPERSIST`). It is opened with `IFF_TUN |
//! IFF_NO_PI` and without `IFF_VNET_HDR`: reads return one bare IP datagram each, never larger
//! than the MTU, because the kernel cannot hand segmentation offloads (TSO, USO/GSO) to a device
//! that did not ask for them with `TUNSETOFFLOAD`, and segments in software before the device.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An open TUN device.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tun {
    /// Create TUN device `name` in the calling thread's network namespace, non-blocking.
    pub fn create(name: &str) -> io::Result<Tun> {
        // SAFETY: the path is NUL-terminated; the fd is ours.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("open /dev/net/tun: {e}")));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq we pass.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) })
            .map_err(|e| io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")))?;
        Ok(Tun { fd })
    }

    /// The descriptor packets are read from and written to.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Read one datagram; `Ok(None)` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                io::ErrorKind::Interrupted => self.recv(buf),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }

    /// Inject one datagram into the device's namespace, as if it had arrived on the wire.
    pub fn send(&self, pkt: &[u8]) -> io::Result<()> {
        // SAFETY: pkt is valid for reads of its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A datagram socket of the calling thread's namespace, the handle interface ioctls go through.
fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the fd is ours.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) on Linux.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Bring interface `name` up (and set IFF_RUNNING's companion flags as the kernel sees fit).
pub fn set_up(name: &str) -> io::Result<()> {
    let s = ctl_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq's flags.
    unsafe {
        check(libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req))
    }
    .map_err(|e| io::Error::new(e.kind(), format!("bring {name} up: {e}")))
}

/// Give interface `name` the address `addr/prefix`, an MTU and (where allowed) a transmit queue
/// length. The kernel adds the connected route for the prefix when the device comes up.
pub fn configure_ipv4(name: &str, addr: Ipv4Addr, prefix: u8, mtu: u32, txqueuelen: u32) -> io::Result<()> {
    let s = ctl_socket()?;
    let wrap = |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what} on {name}: {e}"));
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY (all ioctls below): each reads the ifreq field it is documented to read.
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFMTU, &mut req) }).map_err(wrap("set MTU"))?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_metric = txqueuelen as libc::c_int; // ifr_qlen shares the union
                                                          // Best effort: refused inside a user namespace here, and the default (500) is enough.
    if let Err(e) = check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFTXQLEN, &mut req) }) {
        tracing::debug!("txqueuelen {txqueuelen} on {name}: {e} (keeping the default)");
    }
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFADDR, &mut req) }).map_err(wrap("set address"))?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask));
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFNETMASK, &mut req) }).map_err(wrap("set netmask"))?;
    Ok(())
}

/// Turn IPv6 off for `dev` (`all`, `default` or a device name) in the calling thread's
/// namespace, so the kernel sends no router solicitations or MLD reports across the link.
/// Kernels without IPv6 have no such file; that is fine too.
pub fn disable_ipv6(dev: &str) -> io::Result<()> {
    match std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
