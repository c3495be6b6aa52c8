//! Names: containers find each other by name, as on a netavark network with
//! aardvark-dns. Each network keeps a [`NameTable`] (its containers' names,
//! aliases and addresses, local and from the cluster); a [`DnsServer`] on
//! the network's gateway answers from it, forwards the rest to the
//! resolvers of netd's namespace, and counts what it did
//! ([`DnsCountersSnapshot`]). See docs/dns.md.
//!
//! The part stands alone: netd's attach/detach inserts and removes names,
//! the cluster watcher calls [`NameTable::replace_host`], the daemon starts
//! one server per network and renders its counters.

mod answer;
mod cache;
mod counters;
mod error;
mod forward;
mod limits;
mod query;
mod resolv_conf;
mod server;
mod table;
mod tcp;
mod udp;

pub use answer::{LocalAnswer, Zone, DEFAULT_SEARCH_DOMAIN, LOCAL_TTL};
pub use counters::{DnsCounters, DnsCountersSnapshot};
pub use error::NamesError;
pub use limits::RateLimit;
pub use server::{DnsServer, DnsServerConfig};
pub use table::{
    normalized_name, ContainerNames, HostReplaced, NameAddresses, NameRow, NameSource, NameTable,
    MAX_NAME_LEN,
};
