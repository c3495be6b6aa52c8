//! Finding the container end of a host link: which namespace, which link,
//! which addresses.
//!
//! A veth's host end names its peer by the peer's index and by the id the
//! host namespace gives the peer's namespace (IFLA_LINK_NETNSID). Indexes
//! alone are ambiguous: namespaces made the same way number their links the
//! same way, so two containers' ends can both be "link 2 whose peer is link
//! 14". The namespace id is not: the host namespace is asked for the id of
//! each candidate namespace (RTM_GETNSID by file descriptor), and only the
//! one with the link's id is looked into.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::RouteNetlinkMessage;
use plumb::{Link, Netlink, Netns};

use crate::state::Endpoint;

/// The container end of a host link, as found in its namespace.
pub(super) struct Peer {
    pub netns: PathBuf,
    pub netns_inode: u64,
    pub link: Link,
    pub ips: Vec<IpNetwork>,
}

/// A namespace looked at: where it was found and the id the host gives it.
struct Seen {
    path: PathBuf,
    inode: u64,
    nsid: Option<i32>,
    /// Its links, once listed.
    links: Option<Vec<Link>>,
}

/// The namespaces a container end may be in, opened as they are needed:
/// the one the state named first, then every named namespace, then every
/// process's (each namespace once).
pub(super) struct Candidates<'a> {
    host_nl: &'a Netlink,
    host: (u64, u64),
    /// (device, inode) → what was seen of it.
    seen: BTreeMap<(u64, u64), Seen>,
    scanned: bool,
}

impl<'a> Candidates<'a> {
    pub fn new(host: &Netns, host_nl: &'a Netlink) -> Candidates<'a> {
        Candidates {
            host_nl,
            host: host.identity(),
            seen: BTreeMap::new(),
            scanned: false,
        }
    }

    /// Notes the namespace at `path` and its id, unless it was already or
    /// it is the host's.
    async fn visit(&mut self, path: &Path) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let key = (meta.dev(), meta.ino());
        if key == self.host || self.seen.contains_key(&key) {
            return;
        }
        let Ok(netns) = Netns::path(path) else {
            return;
        };
        let nsid = nsid_of(self.host_nl, &netns).await;
        self.seen.insert(
            key,
            Seen {
                path: path.to_path_buf(),
                inode: meta.ino(),
                nsid,
                links: None,
            },
        );
    }

    /// The veths whose peer is `link` (each names the other's index), in the
    /// namespaces with id `nsid` (any, when the kernel gave none).
    async fn find(&mut self, link: &Link, nsid: Option<i32>) -> Vec<(u64, PathBuf, Link)> {
        let mut found = Vec::new();
        for seen in self.seen.values_mut() {
            if nsid.is_some() && seen.nsid != nsid {
                continue;
            }
            if seen.links.is_none() {
                let links = match Netns::path(&seen.path) {
                    Ok(netns) => match Netlink::open(&netns).await {
                        Ok(nl) => nl.links().await.unwrap_or_default(),
                        Err(_) => Vec::new(),
                    },
                    Err(_) => Vec::new(),
                };
                seen.links = Some(links);
            }
            for l in seen.links.iter().flatten() {
                if l.is_kind("veth")
                    && l.parent_elsewhere
                    && Some(l.index) == link.parent
                    && l.parent == Some(link.index)
                {
                    found.push((seen.inode, seen.path.clone(), l.clone()));
                }
            }
        }
        found
    }

    pub async fn peer_of(&mut self, link: &Link, hint: Option<&Endpoint>) -> Result<Peer, String> {
        if link.parent.is_none() {
            return Err("the kernel does not say where its other end is".into());
        }
        let nsid = peer_nsid(self.host_nl, link.index).await;
        if let Some(h) = hint {
            self.visit(&h.netns).await;
        }
        let mut found = self.find(link, nsid).await;
        if found.is_empty() && !self.scanned {
            self.scan().await;
            found = self.find(link, nsid).await;
        }
        let (ino, path, peer) = match found.len() {
            1 => found.remove(0),
            0 => {
                return Err(
                    "its other end is in no namespace netd can see (not in /run/netns, nor any process's)".into(),
                )
            }
            n => {
                return Err(format!(
                    "{n} namespaces hold a link that could be its other end: which one is not clear"
                ))
            }
        };
        let netns = Netns::path(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        let nl = Netlink::open(&netns)
            .await
            .map_err(|e| format!("open netlink in {}: {e}", path.display()))?;
        let ips = nl
            .addresses(Some(peer.index))
            .await
            .map_err(|e| format!("list the addresses in {}: {e}", path.display()))?
            .into_iter()
            .map(|a| a.network)
            .filter(|n| !is_link_local(n.ip()))
            .collect();
        Ok(Peer {
            netns: path,
            netns_inode: ino,
            link: peer,
            ips,
        })
    }

    /// Notes every named namespace, then every process's.
    async fn scan(&mut self) {
        self.scanned = true;
        for name in Netns::list_named().unwrap_or_default() {
            self.visit(&Path::new("/run/netns").join(name)).await;
        }
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                self.visit(&entry.path().join("ns/net")).await;
            }
        }
    }
}

/// The id the host namespace gives the namespace of link `index`'s peer.
async fn peer_nsid(nl: &Netlink, index: u32) -> Option<i32> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    let answer = nl
        .request_one(RouteNetlinkMessage::GetLink(msg), || {
            nl.target("find", format!("link {index}"))
        })
        .await
        .ok()?;
    let RouteNetlinkMessage::NewLink(msg) = answer else {
        return None;
    };
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) if *id >= 0 => Some(*id),
        _ => None,
    })
}

/// The id the host namespace gives `netns`, if it gave it one (it does for
/// every namespace a link of its own has a peer in).
async fn nsid_of(nl: &Netlink, netns: &Netns) -> Option<i32> {
    let mut msg = NsidMessage::default();
    // The kernel looks the descriptor up in this process, which holds it
    // open until the answer is in.
    msg.attributes
        .push(NsidAttribute::Fd(netns.as_raw_fd() as u32));
    let answer = nl
        .request_one(RouteNetlinkMessage::GetNsId(msg), || {
            nl.target("find", format!("the id of namespace {}", netns.label()))
        })
        .await
        .ok()?;
    let RouteNetlinkMessage::NewNsId(msg) = answer else {
        return None;
    };
    msg.attributes.iter().find_map(|a| match a {
        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
        _ => None,
    })
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}
