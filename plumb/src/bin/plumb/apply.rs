//! `plumb apply FILE [--prune] [--dry-run]`: make the kernel match a topology file.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use plumb::topology::{self, Outcome};
use plumb::Netlink;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The topology file (TOML; see docs/examples/topology.toml).
    pub file: PathBuf,
    /// Also remove what this topology made that the file no longer names
    /// (interfaces, namespaces, bridges without ports, addresses, routes).
    #[arg(long)]
    pub prune: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(
    host: &Netlink,
    args: ApplyArgs,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let topology = topology::load(&args.file)?;
    let observed = topology::observe(host, &topology, args.prune)
        .await
        .map_err(|source| topology::Error::Observe {
            topology: topology.name.clone(),
            source: Box::new(source),
        })?;
    let plan = topology::plan(&topology, &observed, args.prune)?;
    let mut outcome = Outcome::new(&plan, args.dry_run);
    if plan.is_empty() {
        if json {
            serde_json::to_writer_pretty(&mut *out, &outcome)?;
            writeln!(out)?;
        } else {
            writeln!(out, "topology {}: nothing to do", plan.topology)?;
        }
        return Ok(());
    }
    if args.dry_run {
        if json {
            serde_json::to_writer_pretty(&mut *out, &outcome)?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "topology {}: {} change(s) planned (dry run, nothing changed):",
                plan.topology,
                plan.actions.len()
            )?;
            for action in &plan.actions {
                writeln!(out, "  {action}")?;
            }
        }
        return Ok(());
    }
    if !json {
        writeln!(
            out,
            "topology {}: {} change(s):",
            plan.topology,
            plan.actions.len()
        )?;
    }
    let mut printed = Ok(());
    let result = topology::apply(host, &topology, &plan, |action| {
        if !json && printed.is_ok() {
            printed = writeln!(out, "  {action}").and_then(|_| out.flush());
        }
    })
    .await;
    printed?;
    match result {
        Ok(applied) => {
            outcome.applied = applied;
        }
        Err(e) => {
            if let topology::Error::Action { done, .. } = &e {
                outcome.applied = *done;
            }
            outcome.error = Some(error_chain(&e));
            if json {
                mark_done(&mut outcome);
                serde_json::to_writer_pretty(&mut *out, &outcome)?;
                writeln!(out)?;
            }
            return Err(e.into());
        }
    }
    mark_done(&mut outcome);
    if json {
        serde_json::to_writer_pretty(&mut *out, &outcome)?;
        writeln!(out)?;
    } else {
        writeln!(out, "topology {}: applied", plan.topology)?;
    }
    Ok(())
}

fn mark_done(outcome: &mut Outcome) {
    for report in outcome.actions.iter_mut().take(outcome.applied) {
        report.done = true;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}
