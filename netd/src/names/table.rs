//! The names one network answers: each container's name and aliases, its
//! addresses and where it lives. Local attaches insert and remove one
//! container at a time; the cluster replaces everything one remote host
//! published in one call. Names are unique per network across all hosts.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use super::error::NamesError;

/// The longest name or alias: with a search domain of up to 62 bytes the
/// qualified name stays within DNS's 253.
pub const MAX_NAME_LEN: usize = 190;

/// Where a record came from: this host's attaches, or another host's
/// publication in the cluster store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameSource {
    Local,
    Cluster,
}

/// One container's names on one network, as netd registers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerNames {
    /// The container's key in netd (its ID); records are removed by it.
    pub container: String,
    /// The primary name; PTR queries answer with it.
    pub name: String,
    /// Further names that resolve to the same addresses.
    #[serde(default)]
    pub aliases: Vec<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The host the container runs on (netd's host name).
    pub host: String,
    pub source: NameSource,
}

impl ContainerNames {
    fn names(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.name).chain(self.aliases.iter())
    }

    fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        let v4 = self.ipv4.map(IpAddr::V4);
        let v6 = self.ipv6.map(IpAddr::V6);
        v4.into_iter().chain(v6)
    }
}

/// The addresses one name resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddresses {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// One answered name, for `netd names --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRow {
    pub name: String,
    /// False for the primary name, true for an alias.
    pub alias: bool,
    pub container: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub host: String,
    pub source: NameSource,
}

/// What [`NameTable::replace_host`] did.
#[derive(Debug, Default)]
pub struct HostReplaced {
    /// Records of the host now in the table.
    pub inserted: usize,
    /// Records of the host that were there before and are gone now.
    pub removed: usize,
    /// Records refused (a name or address held by another host's container,
    /// or a bad name); the rest of the host's records are served.
    pub refused: Vec<NamesError>,
    /// False when the host's records were these already: nothing was written.
    pub changed: bool,
}

/// The names of one network. Shared (`Arc`) between netd's attach/detach,
/// the cluster watcher and the DNS server; every call takes `&self`.
#[derive(Debug, Default)]
pub struct NameTable {
    inner: RwLock<Records>,
}

#[derive(Debug, Default)]
struct Records {
    by_container: HashMap<String, ContainerNames>,
    /// Lowercase name → container.
    by_name: HashMap<String, String>,
    by_address: HashMap<IpAddr, String>,
}

impl NameTable {
    pub fn new() -> NameTable {
        NameTable::default()
    }

    /// Registers a container's names, replacing what it had (a re-attach or
    /// a restart registers again). Names are lowercased. A name or address
    /// held by another container is refused, naming both, and nothing changes.
    pub fn insert(&self, record: ContainerNames) -> Result<(), NamesError> {
        let record = normalized(record)?;
        let mut records = self.write();
        records.check_free(&record)?;
        records.remove(&record.container);
        records.add(record);
        Ok(())
    }

    /// Forgets a container's names; returns what it had.
    pub fn remove(&self, container: &str) -> Option<ContainerNames> {
        self.write().remove(container)
    }

    /// Replaces every record of `host` by `records` in one step: what a
    /// cluster watch delivers for a remote host (an empty list when its lease
    /// is gone), and what the daemon's periodic check finds in its state.
    /// Records naming another host are refused. The records are checked
    /// before the table is locked, and a host whose records are already
    /// these is not written at all: the DNS server reads the table all the
    /// while, and a writer that the scheduler preempts holding the lock
    /// would hold up every lookup until it runs again.
    pub fn replace_host(&self, host: &str, records: Vec<ContainerNames>) -> HostReplaced {
        let mut report = HostReplaced::default();
        let mut checked = Vec::with_capacity(records.len());
        for record in records {
            if record.host != host {
                report.refused.push(NamesError::InvalidRecord {
                    container: record.container,
                    reason: "its host differs from the host whose records are being replaced",
                });
                continue;
            }
            match normalized(record) {
                Ok(record) => checked.push(record),
                Err(e) => report.refused.push(e),
            }
        }
        if report.refused.is_empty() && self.read().holds_exactly(host, &checked) {
            report.inserted = checked.len();
            return report;
        }
        let mut table = self.write();
        let old: Vec<String> = table
            .by_container
            .values()
            .filter(|r| r.host == host)
            .map(|r| r.container.clone())
            .collect();
        for container in &old {
            table.remove(container);
        }
        for record in checked {
            match table.check_free(&record) {
                Ok(()) => {
                    table.add(record);
                    report.inserted += 1;
                }
                Err(e) => report.refused.push(e),
            }
        }
        report.removed = old
            .iter()
            .filter(|c| !table.by_container.contains_key(*c))
            .count();
        report.changed = true;
        report
    }

    /// Every container's record, sorted by container: what this host
    /// publishes (filter by host) or what a restart compares against.
    pub fn records(&self) -> Vec<ContainerNames> {
        let mut all: Vec<ContainerNames> = self.read().by_container.values().cloned().collect();
        all.sort_by(|a, b| a.container.cmp(&b.container));
        all
    }

    /// One row per answered name, sorted by name.
    pub fn list(&self) -> Vec<NameRow> {
        let records = self.read();
        let mut rows: Vec<NameRow> = records
            .by_container
            .values()
            .flat_map(|r| {
                r.names().enumerate().map(|(i, name)| NameRow {
                    name: name.clone(),
                    alias: i > 0,
                    container: r.container.clone(),
                    ipv4: r.ipv4,
                    ipv6: r.ipv6,
                    host: r.host.clone(),
                    source: r.source,
                })
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }

    /// The addresses of a bare name (any case, no trailing dot).
    pub fn addresses_of(&self, name: &str) -> Option<NameAddresses> {
        // The DNS server asks in lowercase already: no copy then.
        let key: Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        let records = self.read();
        let container = records.by_name.get(key.as_ref())?;
        let record = records.by_container.get(container)?;
        Some(NameAddresses {
            ipv4: record.ipv4,
            ipv6: record.ipv6,
        })
    }

    /// The primary name of the container holding `address`.
    pub fn name_of(&self, address: IpAddr) -> Option<String> {
        let records = self.read();
        let container = records.by_address.get(&address)?;
        Some(records.by_container.get(container)?.name.clone())
    }

    /// True when some name ends in `.suffix`: then `suffix` exists in the
    /// tree (an empty non-terminal) and is answered NODATA, not NXDOMAIN.
    pub fn has_names_under(&self, suffix: &str) -> bool {
        let dotted = format!(".{}", suffix.to_ascii_lowercase());
        self.read().by_name.keys().any(|n| n.ends_with(&dotted))
    }

    /// How many containers have names here.
    pub fn len(&self) -> usize {
        self.read().by_container.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A panic while holding the lock leaves the maps consistent (every
    // mutation is a few map operations that cannot panic), so poisoning is
    // ignored rather than taking DNS down with it.
    fn read(&self) -> RwLockReadGuard<'_, Records> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Records> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Records {
    /// True when `host`'s records are exactly `records` (normalized).
    fn holds_exactly(&self, host: &str, records: &[ContainerNames]) -> bool {
        let held = self
            .by_container
            .values()
            .filter(|r| r.host == host)
            .count();
        held == records.len()
            && records
                .iter()
                .all(|r| self.by_container.get(&r.container) == Some(r))
    }

    fn check_free(&self, record: &ContainerNames) -> Result<(), NamesError> {
        for name in record.names() {
            if let Some(holder) = self.holder(self.by_name.get(name), &record.container) {
                return Err(NamesError::NameTaken {
                    name: name.clone(),
                    held_by: holder.container.clone(),
                    held_on: holder.host.clone(),
                    wanted_by: record.container.clone(),
                });
            }
        }
        for address in record.addresses() {
            if let Some(holder) = self.holder(self.by_address.get(&address), &record.container) {
                return Err(NamesError::AddressTaken {
                    address,
                    held_by: holder.container.clone(),
                    held_on: holder.host.clone(),
                    wanted_by: record.container.clone(),
                });
            }
        }
        Ok(())
    }

    /// The record of `container`, unless it is `asking` itself.
    fn holder(&self, container: Option<&String>, asking: &str) -> Option<&ContainerNames> {
        container
            .filter(|c| c.as_str() != asking)
            .and_then(|c| self.by_container.get(c))
    }

    fn add(&mut self, record: ContainerNames) {
        for name in record.names() {
            self.by_name.insert(name.clone(), record.container.clone());
        }
        for address in record.addresses() {
            self.by_address.insert(address, record.container.clone());
        }
        self.by_container.insert(record.container.clone(), record);
    }

    fn remove(&mut self, container: &str) -> Option<ContainerNames> {
        let record = self.by_container.remove(container)?;
        for name in record.names() {
            self.by_name.remove(name);
        }
        for address in record.addresses() {
            self.by_address.remove(&address);
        }
        Some(record)
    }
}

/// Lowercases and checks every name; drops aliases repeating a name.
fn normalized(mut record: ContainerNames) -> Result<ContainerNames, NamesError> {
    if record.ipv4.is_none() && record.ipv6.is_none() {
        return Err(NamesError::InvalidRecord {
            container: record.container,
            reason: "no IPv4 or IPv6 address to answer with",
        });
    }
    record.name = normalized_name(&record.container, &record.name)?;
    let mut aliases: Vec<String> = Vec::with_capacity(record.aliases.len());
    for alias in &record.aliases {
        let alias = normalized_name(&record.container, alias)?;
        if alias != record.name && !aliases.contains(&alias) {
            aliases.push(alias);
        }
    }
    record.aliases = aliases;
    Ok(record)
}

/// A name as the table keeps it: lowercase, no trailing dot, labels of
/// letters, digits, '-' and '_' (podman and Docker allow '_' and '.').
pub fn normalized_name(container: &str, name: &str) -> Result<String, NamesError> {
    let invalid = |reason| NamesError::InvalidName {
        container: container.to_string(),
        name: name.to_string(),
        reason,
    };
    let lower = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if lower.is_empty() {
        return Err(invalid("empty"));
    }
    if lower.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 190 bytes"));
    }
    if lower.parse::<IpAddr>().is_ok() {
        return Err(invalid("an IP address cannot be a name"));
    }
    for label in lower.split('.') {
        if label.is_empty() {
            return Err(invalid(
                "has an empty label (two dots in a row, or a leading dot)",
            ));
        }
        if label.len() > 63 {
            return Err(invalid("has a label longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "may hold only letters, digits, '-', '_' and '.' between labels",
            ));
        }
    }
    if lower == "arpa" || lower.ends_with(".arpa") {
        return Err(invalid("names under .arpa would hide reverse lookups"));
    }
    Ok(lower)
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
