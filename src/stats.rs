//! Kernel TCP statistics: the fields of `TCP_INFO` quiclab reports and the socket's
//! `TCP_CONGESTION`, read from a live socket (`/conn` over HTTP/2, the lab's reports).

/// The fields of Linux's `struct tcp_info` that quiclab reports. Fields newer kernels added are
/// `None` when the kernel returned a shorter struct.
#[derive(Debug, Clone, Default)]
pub(crate) struct TcpInfo {
    /// Smoothed RTT, microseconds.
    pub(crate) rtt_us: u32,
    /// Current retransmission timeout, microseconds (`tcpi_rto`).
    pub(crate) rto_us: u32,
    /// Minimum RTT seen, microseconds (Linux 4.6+).
    pub(crate) min_rtt_us: Option<u32>,
    /// Congestion window, in segments.
    pub(crate) snd_cwnd: u32,
    /// Sender MSS, bytes.
    pub(crate) snd_mss: u32,
    /// Segments retransmitted over the connection's life.
    pub(crate) total_retrans: u32,
    /// Segments sent (Linux 4.2+).
    pub(crate) segs_out: Option<u32>,
    /// Bytes retransmitted (Linux 4.19+).
    pub(crate) bytes_retrans: Option<u64>,
    /// Retransmission timeouts (Linux 6.7+).
    pub(crate) total_rto: Option<u16>,
}

/// The kernel's `struct tcp_info` layout (include/uapi/linux/tcp.h), through `tcpi_total_rto_time`.
#[repr(C)]
#[derive(Default)]
struct RawTcpInfo {
    u8s: [u8; 8],
    rto: u32,
    ato: u32,
    snd_mss: u32,
    rcv_mss: u32,
    unacked: u32,
    sacked: u32,
    lost: u32,
    retrans: u32,
    fackets: u32,
    last_data_sent: u32,
    last_ack_sent: u32,
    last_data_recv: u32,
    last_ack_recv: u32,
    pmtu: u32,
    rcv_ssthresh: u32,
    rtt: u32,
    rttvar: u32,
    snd_ssthresh: u32,
    snd_cwnd: u32,
    advmss: u32,
    reordering: u32,
    rcv_rtt: u32,
    rcv_space: u32,
    total_retrans: u32,
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u32,
    segs_in: u32,
    notsent_bytes: u32,
    min_rtt: u32,
    data_segs_in: u32,
    data_segs_out: u32,
    delivery_rate: u64,
    busy_time: u64,
    rwnd_limited: u64,
    sndbuf_limited: u64,
    delivered: u32,
    delivered_ce: u32,
    bytes_sent: u64,
    bytes_retrans: u64,
    dsack_dups: u32,
    reord_seen: u32,
    rcv_ooopack: u32,
    snd_wnd: u32,
    rcv_wnd: u32,
    rehash: u32,
    total_rto: u16,
    total_rto_recoveries: u16,
    total_rto_time: u32,
}

impl TcpInfo {
    /// `getsockopt(TCP_INFO)` on a TCP socket.
    pub(crate) fn read(fd: std::os::fd::RawFd) -> std::io::Result<TcpInfo> {
        let mut raw = RawTcpInfo::default();
        let mut len = std::mem::size_of::<RawTcpInfo>() as libc::socklen_t;
        // SAFETY: `raw` is a plain repr(C) struct of integers, `len` its size; the kernel
        // writes at most `len` bytes and reports how many.
        let rc = unsafe {
            libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut raw as *mut RawTcpInfo).cast(), &mut len)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let len = len as usize;
        let has = |end_offset: usize| len >= end_offset;
        macro_rules! end_of {
            ($f:ident) => {
                std::mem::offset_of!(RawTcpInfo, $f) + std::mem::size_of_val(&raw.$f)
            };
        }
        Ok(TcpInfo {
            rtt_us: raw.rtt,
            rto_us: raw.rto,
            min_rtt_us: has(end_of!(min_rtt)).then_some(raw.min_rtt),
            snd_cwnd: raw.snd_cwnd,
            snd_mss: raw.snd_mss,
            total_retrans: raw.total_retrans,
            segs_out: has(end_of!(segs_out)).then_some(raw.segs_out),
            bytes_retrans: has(end_of!(bytes_retrans)).then_some(raw.bytes_retrans),
            total_rto: has(end_of!(total_rto)).then_some(raw.total_rto),
        })
    }
}

/// The socket's TCP congestion control algorithm (`TCP_CONGESTION`).
pub(crate) fn tcp_congestion(fd: std::os::fd::RawFd) -> std::io::Result<String> {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`.
    let rc =
        unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, buf.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let name = &buf[..len as usize];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}
