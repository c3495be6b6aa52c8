//! Container #1 and container #N attached at the same moments.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use world::{Container, Host, World};

use super::netd_modes::{KernelFloor, NetdApi, NetdLib};
use super::{Driver, Mode, Paired, AFTER_DETACH};

/// netd's two modes and the kernel floor behind one type, for the paired
/// measurement.
pub(super) enum Netd {
    Lib(Box<NetdLib>),
    Api(NetdApi),
    Kernel(KernelFloor),
}

impl Netd {
    pub(super) async fn new(mode: Mode, host: &Host, dir: &Path) -> Result<Netd> {
        std::fs::create_dir_all(dir)?;
        Ok(match mode {
            Mode::NetdLib => Netd::Lib(Box::new(NetdLib::new(host, dir).await?)),
            Mode::NetdApi => Netd::Api(NetdApi::new(host, dir).await?),
            Mode::Kernel => Netd::Kernel(KernelFloor::new(host, dir).await?),
            other => bail!("{} has no paired measurement", other.name()),
        })
    }

    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        match self {
            Netd::Lib(d) => d.attach(i, c).await,
            Netd::Api(d) => d.attach(i, c).await,
            Netd::Kernel(d) => d.attach(i, c).await,
        }
    }

    async fn detach_fully(&mut self, i: usize, c: &Container) -> Result<()> {
        match self {
            Netd::Lib(d) => d.detach_fully(i, c).await,
            Netd::Api(d) => d.detach_fully(i, c).await,
            Netd::Kernel(d) => d.detach_fully(i, c).await,
        }
    }

    async fn detach(&mut self, i: usize, c: &Container) -> Result<()> {
        match self {
            Netd::Lib(d) => d.detach(i, c).await,
            Netd::Api(d) => d.detach(i, c).await,
            Netd::Kernel(d) => d.detach(i, c).await,
        }
    }

    async fn settle(&mut self) -> Result<()> {
        match self {
            Netd::Lib(d) => d.settle().await,
            Netd::Api(d) => d.settle().await,
            Netd::Kernel(d) => d.settle().await,
        }
    }
}

/// Two hosts of one mode, one empty and one holding N−1 containers; one
/// probe container is attached to each in turn (which goes first
/// alternates) and fully detached before the next. Whatever else the
/// machine does at that moment falls on both sides of a pair, which the
/// first and last 10% of a sequential run, seconds apart, cannot promise.
pub(super) async fn paired(
    world: &World,
    mode: Mode,
    n: usize,
    pairs: usize,
    containers: &[Container],
    dir: &Path,
) -> Result<Paired> {
    let started = Instant::now();
    let (warmup, rest) = containers.split_first().context("no containers")?;
    let (filler, probe) = (&rest[..n - 1], &rest[n - 1]);
    let empty_host = world.host(&format!("{}e", mode.host_name())).await?;
    let full_host = world.host(&format!("{}f", mode.host_name())).await?;
    let mut empty = Netd::new(
        mode,
        &empty_host,
        &dir.join(format!("{}-empty", mode.name())),
    )
    .await?;
    let mut full = Netd::new(mode, &full_host, &dir.join(format!("{}-full", mode.name()))).await?;
    for side in [&mut empty, &mut full] {
        side.attach(0, warmup).await.context("warm-up attach")?;
        side.detach_fully(0, warmup)
            .await
            .context("warm-up detach")?;
    }
    for (k, c) in filler.iter().enumerate() {
        full.attach(k + 1, c).await?;
    }
    let mut result = Paired {
        mode,
        n,
        first: Vec::with_capacity(pairs),
        nth: Vec::with_capacity(pairs),
    };
    for round in 0..pairs {
        let mut order = [
            (&mut empty, &mut result.first),
            (&mut full, &mut result.nth),
        ];
        if round % 2 == 1 {
            order.reverse();
        }
        for (side, times) in order {
            let t = Instant::now();
            side.attach(n, probe).await?;
            times.push(t.elapsed());
            side.detach_fully(n, probe).await?;
            // The kernel finishes a removed port's clean-up in the
            // background (more of it on the full host): let it end, so that
            // neither side pays for the other's detach.
            tokio::time::sleep(AFTER_DETACH).await;
        }
    }
    // Untimed: the daemon deletes the veth pairs in batches meanwhile.
    for (k, c) in filler.iter().enumerate() {
        full.detach(k + 1, c).await?;
    }
    full.settle().await?;
    eprintln!(
        "bench-attach: {:<9} #1 and #{n} in {pairs} pairs, done in {:.1} s",
        mode.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(result)
}
