//! The TUN device: /dev/net/tun with TUNSETIFF (IFF_TUN | IFF_NO_PI |
//! IFF_VNET_HDR), so each read or write is one virtio-net header followed by
//! one IP packet — which, with the offloads TUNSETOFFLOAD grants (checksum,
//! TSO for IPv4 and IPv6, USO where the kernel has it), may be a TCP or UDP
//! super-segment of up to 64 KiB in either direction (see `offload`). The
//! link lives in the namespace of the thread that calls `Tun::create` and
//! disappears when the device closes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::offload::VirtioNetHdr;

/// Why the TUN device could not be opened or set up.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// /dev/net/tun could not be opened.
    #[error("open /dev/net/tun: {0} (is the tun module loaded, and are we root?)")]
    Open(#[source] io::Error),
    /// TUNSETIFF refused the device.
    #[error("create TUN device {name}: {source}")]
    Create {
        /// The TUN link name asked for.
        name: String,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// A link name the kernel would refuse (empty, over 15 bytes, '/' or ':').
    #[error("TUN device name {0:?} must be 1 to 15 bytes without '/' or ':'")]
    BadName(String),
    /// TUNSETOFFLOAD failed.
    #[error("enable offloads on TUN device {name}: {source}")]
    Offload {
        /// The TUN link name.
        name: String,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// SIOCSIFTXQLEN failed.
    #[error("set the queue length of TUN device {name}: {source}")]
    QueueLen {
        /// The TUN link name.
        name: String,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
}

/// Mirrors `struct ifreq` for TUNSETIFF: the name, then the flags.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Mirrors `struct ifreq` for SIOCSIFTXQLEN: the name, then the queue length.
#[repr(C)]
struct IfReqQlen {
    name: [libc::c_char; libc::IFNAMSIZ],
    qlen: libc::c_int,
    _pad: [u8; 20],
}

/// Offloads we ask for: checksum, TSO (IPv4, IPv6) and, where offered, USO.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
const OFFLOADS_USO: libc::c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// What the kernel agreed to hand over in one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// TCP super-segments (TSO) and partial checksums.
    pub tso: bool,
    /// UDP super-datagrams (USO, Linux 6.2 and later).
    pub uso: bool,
}

/// An open TUN device. Reads are non-blocking; every read and write starts
/// with a `VNET_HDR_LEN`-byte virtio-net header.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
    offloads: Offloads,
}

impl Tun {
    /// Creates (or attaches to a persistent) TUN device `name` in the calling
    /// thread's network namespace.
    pub fn create(name: &str) -> Result<Tun, TunError> {
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name.contains(['/', ':'])
            || name.contains(char::is_whitespace)
        {
            return Err(TunError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TunError::Open)?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a struct ifreq; `req` has its
        // layout (name then flags, padded to the full size) and outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(TunError::Create {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let offloads = enable_offloads(&file).map_err(|source| TunError::Offload {
            name: name.to_string(),
            source,
        })?;
        Ok(Tun {
            file,
            name: name.to_string(),
            offloads,
        })
    }

    /// What the kernel hands over: super-segments or single packets.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The TUN link's name, as the kernel made it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets how many packets the kernel queues for us to read (the link's
    /// txqueuelen; 500 by default for TUN). When our reader falls behind a
    /// burst, the kernel drops past this — TCP then sees loss, not delay.
    /// Call from a thread inside the link's namespace.
    pub fn set_queue_len(&self, packets: u32) -> Result<(), TunError> {
        let failed = |source| TunError::QueueLen {
            name: self.name.clone(),
            source,
        };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(failed(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReqQlen {
            name: [0; libc::IFNAMSIZ],
            qlen: packets.min(i32::MAX as u32) as libc::c_int,
            _pad: [0; 20],
        };
        for (dst, src) in req.name.iter_mut().zip(self.name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: SIOCSIFTXQLEN reads a struct ifreq whose union holds an int;
        // `req` has that layout and outlives the call.
        let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFTXQLEN, &mut req) };
        if rc < 0 {
            return Err(failed(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Reads one virtio-net header and the packet after it into `buf`;
    /// `WouldBlock` when none is waiting.
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Writes one packet into the kernel, after the virtio-net header that
    /// says whether (and where) the kernel should cut it.
    #[inline]
    pub fn write(&self, hdr: &VirtioNetHdr, packet: &[u8]) -> io::Result<()> {
        let hdr = hdr.to_bytes();
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut libc::c_void,
                iov_len: packet.len(),
            },
        ];
        loop {
            // SAFETY: both iovecs point at live buffers of the lengths given,
            // which the kernel only reads.
            let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), 2) };
            if n >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// TUNSETOFFLOAD with USO when the kernel knows it (EINVAL otherwise), then
/// without; a kernel refusing even that gets no offloads (single packets).
fn enable_offloads(file: &File) -> io::Result<Offloads> {
    let set = |flags: libc::c_uint| -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its flags as the ioctl's integer argument.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let einval = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);
    match set(OFFLOADS | OFFLOADS_USO) {
        Ok(()) => {
            return Ok(Offloads {
                tso: true,
                uso: true,
            })
        }
        Err(e) if einval(&e) => {}
        Err(e) => return Err(e),
    }
    match set(OFFLOADS) {
        Ok(()) => Ok(Offloads {
            tso: true,
            uso: false,
        }),
        Err(e) if einval(&e) => Ok(Offloads {
            tso: false,
            uso: false,
        }),
        Err(e) => Err(e),
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_refuse_are_caught_first() {
        for bad in ["", "sixteen-bytes-xx", "a/b", "a:b", "a b"] {
            assert!(
                matches!(Tun::create(bad), Err(TunError::BadName(_))),
                "{bad:?}"
            );
        }
    }
}
