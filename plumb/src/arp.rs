//! Gratuitous ARP, so neighbours update their caches at once when an address
//! moves to a new MAC (what pipework does with `arping -A`).

use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::mac::MacAddr;
use crate::netns::Netns;

/// An ARP reply announcing `ip` is at `mac`, broadcast (RFC 5227 announcement).
fn announcement(mac: MacAddr, ip: Ipv4Addr) -> [u8; 42] {
    let mut frame = [0u8; 42];
    let m = mac.octets();
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&m);
    frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    frame[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    frame[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    frame[18] = 6;
    frame[19] = 4;
    frame[20..22].copy_from_slice(&2u16.to_be_bytes()); // reply
    frame[22..28].copy_from_slice(&m);
    frame[28..32].copy_from_slice(&ip.octets());
    frame[32..38].copy_from_slice(&[0xff; 6]);
    frame[38..42].copy_from_slice(&ip.octets());
    frame
}

/// Sends one gratuitous ARP for `ip` out of link `ifindex` in `netns`.
pub fn announce(netns: &Netns, ifindex: u32, mac: MacAddr, ip: Ipv4Addr) -> Result<()> {
    let frame = announcement(mac, ip);
    netns.run(|| send_frame(ifindex, &frame))?.map_err(|e| {
        Error::io(
            format!(
                "send gratuitous ARP for {ip} in namespace {}",
                netns.label()
            ),
            e,
        )
    })
}

fn send_frame(ifindex: u32, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: socket() takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = 0x0806u16.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: frame and addr are valid for the lengths passed, and outlive the call.
    let sent = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_layout() {
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let f = announcement(mac, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 2]);
        assert_eq!(&f[28..32], &[10, 0, 0, 2]);
        assert_eq!(&f[38..42], &[10, 0, 0, 2]);
        assert_eq!(&f[22..28], &mac.octets());
    }
}
