//! `netd run`: set up the host, reconcile, serve the API and the metrics,
//! check the kernel periodically, reconcile on SIGHUP, and stop on SIGTERM or
//! SIGINT without touching any container's networking (a restarted netd
//! adopts them from the state).

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::{server, Daemon, PeerSource};
use crate::cluster::ClusterHost;
use crate::config::{Config, ConfigArgs};
use crate::error::{Error, Result};

/// Runs with a fixed configuration: the overlay's peer list never changes.
pub async fn run(config: Config) -> Result<()> {
    let peers = PeerSource::Fixed(config.overlay.clone());
    run_with(config, peers).await
}

/// Runs from a file, environment and flags that every reconciliation reads
/// again for the overlay's peer list.
pub async fn run_from(args: ConfigArgs) -> Result<()> {
    let config = Config::load(&args)?;
    run_with(config, PeerSource::Reread(Box::new(args))).await
}

async fn run_with(mut config: Config, peers: PeerSource) -> Result<()> {
    tracing::debug!("starting");
    raise_open_file_limit();
    // With a store, the subnets and the overlay come from the cluster.
    let cluster = match &config.cluster.store {
        Some(_) => {
            let host_ns = crate::host::open_namespace(&config)?;
            Some(Arc::new(ClusterHost::join(&mut config, &host_ns).await?))
        }
        None => None,
    };
    let daemon = Arc::new(Daemon::open(config.clone(), peers).await?);
    if let Some(cluster) = &cluster {
        daemon.set_cluster(cluster.clone());
        if let Some(overlay) = daemon.overlay() {
            overlay.mark_cluster_managed();
            if !cluster.joined() {
                // Started without the store: the saved peers carry traffic
                // until the store's view replaces them. They cannot learn
                // from the store that this host restarted, so they are
                // greeted: a handshake each replaces their stale session.
                let (actions, errors) = overlay.set_store_peers(cluster.current_peers()).await;
                tracing::info!(actions = actions.len(), "cluster: applied the saved view");
                for error in &errors {
                    tracing::error!("cluster: saved view: {error}");
                }
                overlay.greet_peers().await;
            }
        }
    }
    let (stop, stopped) = watch::channel(false);
    // The peers are followed from here on, while the host is reconciled:
    // the overlay device is up, and its applies and the reconciliation take
    // turns on the overlay's lock.
    let follower = cluster
        .clone()
        .map(|cluster| tokio::spawn(follow_cluster(cluster, daemon.clone(), stopped.clone())));
    if let Some(cluster) = &cluster {
        cluster.go_alive();
    }
    let report = daemon.reconcile().await?;
    tracing::info!(
        actions = report.actions.len(),
        errors = report.errors.len(),
        bridge = %config.bridge,
        subnet = %config.subnet,
        "host reconciled"
    );
    // The bridge exists now. A server that cannot start (port 53 taken on
    // the gateway) stops netd here with the reason; later reconciliations
    // start it again when the bridge is made anew.
    daemon.ensure_names_server().await?;
    let metrics = match config.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::Setup(format!(
                    "metrics: listen on {addr}: {e} — check --metrics-addr"
                ))
            })?;
            tracing::info!(%addr, "serving metrics");
            Some(tokio::spawn(server::serve_metrics(
                daemon.clone(),
                listener,
                stopped.clone(),
            )))
        }
        None => None,
    };
    // The socket appears last: once it answers, netd is ready.
    let listener = server::bind(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), "serving the API");
    let api = tokio::spawn(server::serve(daemon.clone(), listener, stopped.clone()));
    let checker = tokio::spawn(check_periodically(daemon.clone(), stopped.clone()));
    let names_sharer =
        match (&cluster, daemon.names_sharing()) {
            (Some(cluster), Some((table, changed))) => Some(tokio::spawn(
                cluster.clone().share_names(table, changed, stopped.clone()),
            )),
            _ => None,
        };
    let mut left = match &cluster {
        Some(c) => c.left(),
        None => watch::channel(false).1,
    };

    let sig = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| Error::Setup(format!("install a {name} handler: {e}")))
    };
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = sig(SignalKind::hangup(), "SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Ok(()) = left.changed() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reconciling");
                if let Err(e) = daemon.reconcile().await {
                    tracing::error!("reconcile after SIGHUP: {e}");
                }
            }
        }
    }
    tracing::info!("stopping; containers keep their networking");
    let _ = stop.send(true);
    let _ = api.await;
    let _ = checker.await;
    // Operations already taken finish (or roll back) before netd exits; one
    // still running after this is rolled back or finished by the next start.
    if !daemon
        .operations_finished(std::time::Duration::from_secs(10))
        .await
    {
        tracing::warn!("operations still under way; the next start finishes them");
    }
    if let Some(f) = follower {
        let _ = f.await;
    }
    if let Some(s) = names_sharer {
        let _ = s.await;
    }
    // Detaches already answered are finished; a stuck one is left `detaching`
    // for the next start's reconciliation.
    if tokio::time::timeout(std::time::Duration::from_secs(10), daemon.reaped())
        .await
        .is_err()
    {
        tracing::warn!("links of detached containers still being deleted; the next start finishes");
    }
    if let Some(m) = metrics {
        let _ = m.await;
    }
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// Applies each view of the cluster to the overlay until `stopped`.
async fn follow_cluster(
    cluster: Arc<ClusterHost>,
    daemon: Arc<Daemon>,
    stopped: watch::Receiver<bool>,
) {
    cluster
        .follow(
            move |peers| {
                let daemon = daemon.clone();
                async move {
                    match daemon.overlay() {
                        Some(overlay) => overlay.set_store_peers(peers).await,
                        None => (Vec::new(), vec!["the overlay is off".to_string()]),
                    }
                }
            },
            stopped,
        )
        .await
}

/// Each port relayed from `[::1]` and each connection relayed holds
/// descriptors: the soft limit of 1024 a shell hands down would run out
/// long before the hard one.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0
        && limit.rlim_cur < limit.rlim_max
    {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one rlimit from the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            tracing::warn!(
                "raise the open-file limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Every `reconcile_interval`, a quick look at the host; a full
/// reconciliation when it finds something amiss. Every `TRIM_EVERY`, free
/// heap memory goes back to the kernel.
async fn check_periodically(daemon: Arc<Daemon>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(daemon.network().config().reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        if trimmed.elapsed() >= TRIM_EVERY {
            trim_heap();
            trimmed = tokio::time::Instant::now();
        }
        match daemon.needs_reconcile().await {
            Ok(None) => {}
            Ok(Some(reason)) => {
                tracing::info!("periodic check: {reason}; reconciling");
                if let Err(e) = daemon.reconcile().await {
                    tracing::error!("periodic reconcile: {e}");
                }
            }
            Err(e) => {
                daemon.network().metrics().error("check");
                tracing::error!("periodic check: {e}");
            }
        }
    }
}

/// How often free heap memory is handed back to the kernel.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// glibc returns free memory to the kernel only from the top of a heap, and
/// only past a threshold that grows with the largest block freed: what the
/// start-up and a boot storm of peers (every join a new view) left free in
/// between stays resident. `malloc_trim` gives back every free page. Measured
/// (scripts/bench-cluster, 50 hosts): RSS at rest 0.2–0.3 MiB lower on the
/// median host, up to 1 MiB on the hosts that saw the most changes; a call
/// at rest takes 0.1–0.2 ms, so every 10 s is about 1% of netd's idle CPU.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of glibc's heaps; it takes
    // the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
