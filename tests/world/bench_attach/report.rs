//! Medians, ratios and the JSON record.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use super::{Mode, Options, Paired, Run};

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn median(samples: &[Duration]) -> f64 {
    let mut v: Vec<f64> = samples.iter().copied().map(ms).collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Medians of the first and the last 10% (at least one container each).
pub(super) fn ends(samples: &[Duration]) -> (f64, f64) {
    let k = samples.len().div_ceil(10).max(1);
    (median(&samples[..k]), median(&samples[samples.len() - k..]))
}

pub(super) fn report_pairs(pairs: &[Paired]) {
    if pairs.is_empty() {
        return;
    }
    println!();
    println!("container #1 and #N attached at the same moments (goal: #N ≤ 1.2× #1):");
    let growth = |p: &Paired| median(&p.nth) - median(&p.first);
    for p in pairs {
        let (first, nth) = (median(&p.first), median(&p.nth));
        println!(
            "  {:<9} #1 {:.2} ms, #{} {:.2} ms (medians of {} pairs): {:.2}×, {:+.2} ms",
            p.mode.name(),
            first,
            p.n,
            nth,
            p.first.len(),
            nth / first,
            growth(p)
        );
    }
    let Some(floor) = pairs.iter().find(|p| p.mode == Mode::Kernel) else {
        return;
    };
    // What the kernel adds is added to netd's attach whatever netd does:
    // within 1.2× only an attach that costs five times that at #1.
    let floor_growth = growth(floor);
    for p in pairs.iter().filter(|p| p.mode.is_weft()) {
        let within = if floor_growth > 0.0 {
            format!(
                "; with that alone, 1.2× needs #1 ≥ {:.2} ms (it is {:.2})",
                5.0 * floor_growth,
                median(&p.first)
            )
        } else {
            String::new()
        };
        println!(
            "  {:<9} of its {:+.2} ms at #{}, the kernel floor's {floor_growth:+.2} ms{within}",
            p.mode.name(),
            growth(p),
            p.n,
        );
    }
}

pub(super) fn report(opts: &Options, runs: &[Run]) {
    println!();
    println!("bench-attach: per container, attach = create its network and publish one port (host port 20000+i → 80/tcp),");
    println!(
        "detach = remove both. All N attached one after the other, then all detached. Times in ms."
    );
    if runs.iter().any(|r| r.mode == Mode::Kernel) {
        println!("kernel = the floor: only the link requests a netd attach sends (no IPAM, state, checks or port), through plumb.");
    }
    println!(
        "References run up to N={} (bridge+portmap took 352 s at N=500 in baselines.md); larger N compare with their N={} run.",
        opts.reference_cap, opts.reference_cap
    );
    println!();
    println!(
        "{:<9} {:>5} | {:>8} {:>8} {:>8} {:>6} | {:>8} {:>8} {:>8} {:>6}",
        "mode",
        "N",
        "attach",
        "first10%",
        "last10%",
        "last/1",
        "detach",
        "first10%",
        "last10%",
        "last/1"
    );
    println!("{}", "-".repeat(96));
    for run in runs {
        let (af, al) = ends(&run.attach);
        let (df, dl) = ends(&run.detach);
        println!(
            "{:<9} {:>5} | {:>8.2} {:>8.2} {:>8.2} {:>6.2} | {:>8.2} {:>8.2} {:>8.2} {:>6.2}",
            run.mode.name(),
            run.n,
            median(&run.attach),
            af,
            al,
            al / af,
            median(&run.detach),
            df,
            dl,
            dl / df
        );
    }
    for run in runs
        .iter()
        .filter(|r| r.settle > Duration::from_micros(500))
    {
        let total: Duration = run.detach.iter().sum::<Duration>() + run.settle;
        println!(
            "{:<9} {:>5}   veth pairs deleted in the background: all gone {:.1} ms after the last detach returned; \
             all detaches end to end {:.2} ms per container",
            run.mode.name(),
            run.n,
            ms(run.settle),
            ms(total) / run.n as f64
        );
    }
    println!();
    println!("reference ÷ weft, per-container medians (higher is better for weft; goal ≥ 10):");
    println!(
        "{:<9} {:>5} | {:<10} {:>5} | {:>8} {:>8} {:>8}",
        "weft", "N", "reference", "at N", "attach", "detach", "both"
    );
    println!("{}", "-".repeat(66));
    for weft in runs.iter().filter(|r| r.mode.is_weft()) {
        for reference in [Mode::Cni, Mode::Netavark] {
            let at = weft.n.min(opts.reference_cap);
            let Some(r) = runs.iter().find(|r| r.mode == reference && r.n == at) else {
                continue;
            };
            let both = |run: &Run| median(&run.attach) + median(&run.detach);
            println!(
                "{:<9} {:>5} | {:<10} {:>5} | {:>7.1}× {:>7.1}× {:>7.1}×",
                weft.mode.name(),
                weft.n,
                reference.name(),
                at,
                median(&r.attach) / median(&weft.attach),
                median(&r.detach) / median(&weft.detach),
                both(r) / both(weft)
            );
        }
    }
    println!();
    println!("growth (goal: the last 10% of attaches cost ≤ 1.2× the first 10%):");
    for run in runs.iter().filter(|r| r.n >= 100) {
        let (af, al) = ends(&run.attach);
        println!(
            "  {:<9} N={:<5} #{}..{} {:.2} ms → #{}..{} {:.2} ms: {:.2}×",
            run.mode.name(),
            run.n,
            1,
            run.n.div_ceil(10),
            af,
            run.n - run.n.div_ceil(10) + 1,
            run.n,
            al,
            al / af
        );
    }
}

pub(super) fn write_json(path: &Path, runs: &[Run], pairs: &[Paired]) -> Result<()> {
    let runs: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "mode": r.mode.name(),
                "n": r.n,
                "attach_ms": r.attach.iter().copied().map(ms).collect::<Vec<_>>(),
                "detach_ms": r.detach.iter().copied().map(ms).collect::<Vec<_>>(),
                "settle_ms": ms(r.settle),
            })
        })
        .collect();
    let pairs: Vec<Value> = pairs
        .iter()
        .map(|p| {
            json!({
                "mode": p.mode.name(),
                "n": p.n,
                "first_ms": p.first.iter().copied().map(ms).collect::<Vec<_>>(),
                "nth_ms": p.nth.iter().copied().map(ms).collect::<Vec<_>>(),
            })
        })
        .collect();
    std::fs::write(
        path,
        serde_json::to_vec_pretty(&json!({ "runs": runs, "pairs": pairs }))?,
    )?;
    Ok(())
}
