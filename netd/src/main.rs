//! The `netd` binary: the daemon (`netd run`) and the admin commands.

use clap::Parser;

fn main() {
    limit_malloc_arenas();
    let cli = netd::cli::Cli::parse();
    let default_level = if cli.is_daemon() { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netd: start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(cli.run()) {
        eprintln!("netd: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            // thiserror's transparent and "{context}: {source}" variants already
            // print their cause; only add causes the message does not contain.
            if !e.to_string().contains(&cause.to_string()) {
                eprintln!("  caused by: {cause}");
            }
            source = cause.source();
        }
        // Damaged state: a restart would fail the same way (the unit does
        // not restart on this status); `netd recover` is what helps.
        let damaged = matches!(&e, netd::Error::Store(s) if s.is_damage());
        std::process::exit(if damaged {
            netd::state::EXIT_DAMAGED_STATE
        } else {
            1
        });
    }
}

/// glibc gives a thread that finds the allocator busy an arena of its own,
/// up to eight per core, and each arena keeps its own free memory: a netd with
/// its runtime's workers, the overlay's threads and the reaper held nine, and
/// 0.5–0.7 MiB more than with one or two (scripts/bench-cluster, docs/cluster.md).
/// netd allocates little, and nothing per packet; two arenas leave the
/// runtime's two busiest threads apart. `MALLOC_ARENA_MAX` or
/// `glibc.malloc.arena_max` in `GLIBC_TUNABLES` still decide when given.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
        if !chosen {
            // SAFETY: mallopt sets one parameter of glibc's allocator; called
            // first thing in main, before netd starts any thread.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        }
    }
}
