//! Publishing more ports of an attached container, and withdrawing them:
//! recorded in the state first (clashes checked under its lock), then
//! applied to the firewall, and the record undone if the firewall refuses.

use super::mapping::{PortMapping, PublishedPort};
use super::specs::{attached, bind_specs, check_conflicts};
use super::{LocalhostRelay, Ports};
use crate::error::{Error, Result};

impl Ports {
    /// Publishes more ports of an attached container; `relay` also opens
    /// their `[::1]` sockets (the daemon's).
    pub async fn publish(
        &self,
        key: &str,
        specs: &[PortMapping],
        relay: Option<&LocalhostRelay>,
    ) -> Result<Vec<PublishedPort>> {
        let _op = self.host.shared_op().await;
        let result = self.publish_locked(key, specs, relay).await;
        if result.is_err() {
            self.host.metrics().error("publish");
        }
        result
    }

    async fn publish_locked(
        &self,
        key: &str,
        specs: &[PortMapping],
        relay: Option<&LocalhostRelay>,
    ) -> Result<Vec<PublishedPort>> {
        let store = self.host.store();
        // Record first (conflicts checked under the lock), then apply; undo
        // the record if the firewall refuses.
        let (id, ports) = store.update(|s| -> Result<(String, Vec<PublishedPort>)> {
            let ep = attached(s, key)?;
            let ports = bind_specs(&ep.name, specs, &ep.ips)?;
            check_conflicts(s, &ep.name, &ports)?;
            let id = ep.id.clone();
            s.endpoint_mut(&id)
                .expect("found above")
                .ports
                .extend(ports.iter().copied());
            Ok((id, ports))
        })?;
        if let Err(e) = self.add(&ports).await {
            store.update(|s| -> Result<()> {
                if let Some(mut ep) = s.endpoint_mut(&id) {
                    ep.ports.retain(|p| !ports.contains(p));
                }
                Ok(())
            })?;
            return Err(Error::kernel(
                format!("publish ports of container {key}"),
                e,
            ));
        }
        tracing::info!(container = key, ports = ?ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(), "published");
        if let Some(relay) = relay {
            relay.open(&ports);
        }
        Ok(ports)
    }

    /// Withdraws published ports of a container; specs that are not published are skipped.
    pub async fn unpublish(
        &self,
        key: &str,
        specs: &[PortMapping],
        relay: Option<&LocalhostRelay>,
    ) -> Result<Vec<PublishedPort>> {
        let _op = self.host.shared_op().await;
        let ports = self
            .host
            .store()
            .update(|s| -> Result<Vec<PublishedPort>> {
                let ep = attached(s, key)?;
                let wanted = bind_specs(&ep.name, specs, &ep.ips)?;
                let id = ep.id.clone();
                let mut ep = s.endpoint_mut(&id).expect("found above");
                let removed: Vec<PublishedPort> = ep
                    .ports
                    .iter()
                    .copied()
                    .filter(|p| wanted.contains(p))
                    .collect();
                ep.ports.retain(|p| !wanted.contains(p));
                Ok(removed)
            })?;
        let apply = ports.clone();
        self.call(move |fw| fw.remove_ports(&apply))
            .await
            .map_err(|e| {
                self.host.metrics().error("publish");
                Error::kernel(format!("unpublish ports of container {key}"), e)
            })?;
        self.stop_relaying(relay, &ports);
        Ok(ports)
    }
}
