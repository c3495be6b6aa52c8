//! Names: containers find each other by name. Each network keeps a
//! [`NameTable`]; a [`DnsServer`] answers from it on the network's gateway.
mod answer;
mod error;
mod table;

pub use answer::{LocalAnswer, Zone, DEFAULT_SEARCH_DOMAIN, LOCAL_TTL};
pub use error::NamesError;
pub use table::{ContainerNames, HostReplaced, NameAddresses, NameRow, NameSource, NameTable};
