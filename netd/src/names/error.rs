//! What can go wrong when names are registered or the DNS server starts.
//! Serving never fails as a whole: a bad query gets an error answer or is
//! dropped and counted (see [`super::counters`]).

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// A name or alias does not fit DNS (label length, characters, total length).
    #[error("name {name:?} for container {container}: {reason}")]
    InvalidName {
        container: String,
        name: String,
        reason: &'static str,
    },

    /// A record with no address at all, or no name: nothing could be answered.
    #[error("names of container {container}: {reason}")]
    InvalidRecord {
        container: String,
        reason: &'static str,
    },

    /// Names are unique per network: a second container asked for one that is held.
    #[error(
        "name {name:?} is already held by container {held_by} (host {held_on}); container {wanted_by} cannot have it too — pick another name or alias, or detach {held_by} first"
    )]
    NameTaken {
        name: String,
        held_by: String,
        held_on: String,
        wanted_by: String,
    },

    /// Two containers cannot answer for one address (PTR would be ambiguous).
    #[error(
        "address {address} is already registered for container {held_by} (host {held_on}); container {wanted_by} cannot have it too"
    )]
    AddressTaken {
        address: IpAddr,
        held_by: String,
        held_on: String,
        wanted_by: String,
    },

    /// The search domain is not a usable DNS name.
    #[error("search domain {domain:?}: {reason}")]
    InvalidDomain { domain: String, reason: String },

    /// The server's settings contradict each other or name nothing to listen on.
    #[error("DNS server settings: {0}")]
    InvalidConfig(String),

    /// A listening socket could not be opened in the network's namespace.
    #[error(
        "DNS server: {proto} socket on {address} in namespace {namespace}: {source} (is the gateway address on the bridge, and port {port} free?)",
        port = address.port()
    )]
    Listen {
        proto: &'static str,
        address: SocketAddr,
        namespace: String,
        #[source]
        source: std::io::Error,
    },

    /// The network's namespace could not be entered to open sockets.
    #[error("DNS server: enter namespace {namespace}: {source}")]
    Namespace {
        namespace: String,
        #[source]
        source: Box<plumb::Error>,
    },
}
