//! Frames on the fabric: an AF_PACKET capture of one interface in a
//! namespace, and a classifier that tells WireGuard (UDP to or from port
//! 51820) from a host's traffic with the world's etcd (the cluster store),
//! from neighbour discovery and from everything else.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use plumb::Netns;

/// The WireGuard port frames are classified by.
const WIREGUARD_PORT: u16 = 51820;

/// True when `needle` occurs in `haystack` (plaintext on the wire?).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    WireGuard,
    /// TCP with the test world's etcd (a host's store client).
    Store,
    /// ARP, IPv6 neighbour discovery, IGMP/MLD: link-local control traffic.
    Neighbour,
    Other(String),
}

/// What an Ethernet frame on the fabric is.
pub fn classify_frame(frame: &[u8]) -> Frame {
    if frame.len() < 14 {
        return Frame::Other(format!("a runt frame of {} bytes", frame.len()));
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let ip = &frame[14..];
    match ethertype {
        0x0806 => Frame::Neighbour,
        0x0800 if ip.len() >= 28 => {
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            let proto = ip[9];
            // IGMP membership reports to multicast groups, sent as links come up.
            if proto == 2 && ip[16] & 0xf0 == 0xe0 {
                return Frame::Neighbour;
            }
            if proto == 6 && ip.len() >= header_len + 4 {
                let tcp = &ip[header_len..];
                let ports = [
                    u16::from_be_bytes([tcp[0], tcp[1]]),
                    u16::from_be_bytes([tcp[2], tcp[3]]),
                ];
                let etcd = crate::etcd::ETCD_IP.octets();
                if ports.contains(&crate::etcd::ETCD_PORT)
                    && (ip[12..16] == etcd || ip[16..20] == etcd)
                {
                    return Frame::Store;
                }
            }
            if proto != 17 || ip.len() < header_len + 8 {
                return Frame::Other(format!("IPv4 protocol {proto}"));
            }
            let udp = &ip[header_len..];
            let sport = u16::from_be_bytes([udp[0], udp[1]]);
            let dport = u16::from_be_bytes([udp[2], udp[3]]);
            if sport == WIREGUARD_PORT || dport == WIREGUARD_PORT {
                Frame::WireGuard
            } else {
                Frame::Other(format!("UDP {sport} → {dport}"))
            }
        }
        // Neighbour discovery and MLD (ICMPv6, possibly behind hop-by-hop options).
        0x86dd if ip.len() >= 40 && (ip[6] == 58 || ip[6] == 0) => Frame::Neighbour,
        other => Frame::Other(format!("ethertype {other:#06x}")),
    }
}

/// An AF_PACKET capture of every frame crossing one interface.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Vec<u8>>>,
}

impl Capture {
    pub fn start(netns: &Netns, ifname: &str) -> Result<Capture> {
        let ifname = std::ffi::CString::new(ifname).context("interface name")?;
        let socket = netns
            .run(move || -> std::io::Result<OwnedFd> {
                let protocol = (libc::ETH_P_ALL as u16).to_be();
                // SAFETY: plain socket(2) call; the result is checked.
                let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol.into()) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: `ifname` is a valid NUL-terminated string; the lookup
                // happens in this thread's namespace, the fabric's.
                let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
                if index == 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: all-zero bytes are a valid sockaddr_ll.
                let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = protocol;
                addr.sll_ifindex = index as i32;
                // SAFETY: `addr` is a sockaddr_ll of the size given.
                let rc = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&addr as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let timeout = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 100_000,
                };
                // SAFETY: a timeval of the size given, alive across the call.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&timeout as *const libc::timeval).cast(),
                        std::mem::size_of::<libc::timeval>() as u32,
                    )
                };
                Ok(fd)
            })
            .context("enter the capture namespace")?
            .with_context(|| format!("open a packet socket on {}", netns.label()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            while !flag.load(Ordering::Relaxed) && frames.len() < 100_000 {
                // SAFETY: `buf` is valid for writes of its length.
                let n = unsafe {
                    libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            frames
        });
        Ok(Capture { stop, thread })
    }

    pub fn stop(self) -> Vec<Vec<u8>> {
        // Frames still in flight get a moment to arrive.
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
