//! The `plumb` command line: pipework's syntax, and more. The argument
//! parser, the logging setup and the topology files live here, in the binary,
//! so that crates using plumb as a library do not compile clap, toml or
//! tracing-subscriber (the `cli` feature, on by default, brings them in).

mod apply;
mod args;
mod guest;

use std::io::Write;

use clap::{Args, Parser, Subcommand};

use plumb::route::RouteVerb;
use plumb::wire::{self, WireSpec};
use plumb::{MacvlanMode, Netlink, Route};

const AFTER_HELP: &str = "\
The first form is pipework's: `plumb br1 web1 10.0.5.2/24@10.0.5.1` puts container web1
on bridge br1 (created on demand when its name starts with br) with a veth pair;
`plumb eth0 web1 192.168.1.50/24 U:web1@10` gives web1 a macvlan on VLAN 10 of eth0
with a MAC derived from the seed web1. Several addresses (IPv4 and IPv6) may follow
the guest. GUEST is a namespace name (ip netns), a path, a PID, or a podman/docker
container name.

Examples:
  plumb br1 web1 10.0.5.2/24@10.0.5.1 fd05::2/64@fd05::1
  plumb -i eth2 -l vweb1 br1 web1 10.0.6.2/24
  plumb eth1 web1 dhcp
  plumb route web1 add 10.9.0.0/16 via 10.0.5.254
  plumb del web1 -i eth1
  plumb ls --json
  plumb apply topology.toml --dry-run";

#[derive(Parser, Debug)]
#[command(
    name = "plumb",
    version,
    about = "Wire containers and network namespaces: bridges, veth, macvlan, VLANs, addresses, routes",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Put GUEST on HOSTIF (the default command: `plumb HOSTIF GUEST ADDR…`).
    Wire(WireArgs),
    /// Remove what plumb wired into GUEST, and what it made on the host for it.
    Del {
        guest: String,
        /// Only this interface of the guest.
        #[arg(short = 'i', long = "interface")]
        interface: Option<String>,
    },
    /// List what plumb wired, in every namespace.
    Ls,
    /// Change routes inside GUEST with `ip route` words.
    Route {
        guest: String,
        /// add|del|replace|show, then DEST [via GW] [dev IF] [metric N] [onlink] [table N]
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        words: Vec<String>,
    },
    /// Make the kernel match a topology file: bridges, guests, interfaces,
    /// addresses, routes (idempotent; re-run after a reboot).
    Apply(apply::ApplyArgs),
}

#[derive(Args, Debug)]
struct WireArgs {
    /// The host interface: a bridge (gets a veth) or any other link (gets a macvlan).
    host_if: String,
    /// The guest: namespace name, path, PID, or podman/docker container name.
    guest: String,
    /// ADDR/LEN[@GATEWAY] (repeatable, IPv4 and IPv6) or `dhcp`, then optionally
    /// MAC[@VLAN] (MAC as aa:bb:cc:dd:ee:ff or U:<seed>; `@10` alone sets the VLAN).
    #[arg(required = true, num_args = 1..)]
    rest: Vec<String>,
    /// Interface name inside the guest.
    #[arg(short = 'i', long = "interface", default_value = "eth1")]
    interface: String,
    /// Name of the host end of the veth.
    #[arg(short = 'l', long = "local-name")]
    local_name: Option<String>,
    /// Address family: 4 or 6 (checks addresses; picks the DHCP family).
    #[arg(short = 'a', long = "family", value_parser = ["4", "6"])]
    family: Option<String>,
    /// Macvlan mode: bridge, private, vepa or passthru.
    #[arg(long, default_value = "bridge")]
    mode: MacvlanMode,
    /// MTU of the guest interface (the host interface's by default).
    #[arg(long)]
    mtu: Option<u32>,
}

const SUBCOMMANDS: &[&str] = &["wire", "del", "ls", "route", "apply", "help"];
/// Options of `wire` that take a value, so the command word is found after them.
const VALUE_OPTIONS: &[&str] = &[
    "-i",
    "--interface",
    "-l",
    "--local-name",
    "-a",
    "--family",
    "--mode",
    "--mtu",
];

/// Inserts `wire` when the words are pipework's form without a command.
fn with_default_command(args: Vec<String>) -> Vec<String> {
    let mut i = 1;
    while i < args.len() {
        let word = &args[i];
        if VALUE_OPTIONS.contains(&word.as_str()) {
            i += 2;
            continue;
        }
        if word.starts_with('-') {
            if matches!(word.as_str(), "-h" | "--help" | "-V" | "--version") {
                return args;
            }
            i += 1;
            continue;
        }
        if SUBCOMMANDS.contains(&word.as_str()) {
            return args;
        }
        let mut out = args;
        out.insert(1, "wire".to_string());
        return out;
    }
    args
}

fn main() {
    std::process::exit(run_cli());
}

/// Runs the CLI; returns the process exit code.
fn run_cli() -> i32 {
    if std::env::var_os(plumb::dhcp::SCRIPT_ENV).is_some() {
        // Started by udhcpc as its event script, inside the guest.
        let event = std::env::args().nth(1).unwrap_or_default();
        return match plumb::dhcp::run_script(&event) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("plumb (dhcp script): {e}");
                1
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse_from(with_default_command(std::env::args().collect()));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plumb: start runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            let mut msg = format!("plumb: {e}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            1
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let host = Netlink::current().await?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Wire(a) => {
            let parsed = args::parse_rest(&a.rest, a.family.as_deref())?;
            let guest = guest::resolve(&a.guest)?;
            let spec = WireSpec {
                host_if: a.host_if,
                guest: guest.clone(),
                guest_if: a.interface,
                host_side_name: a.local_name,
                addresses: parsed.addresses,
                mac: parsed.mac,
                vlan: parsed.vlan,
                macvlan_mode: a.mode,
                mtu: a.mtu,
            };
            let wiring = wire::wire(&host, &spec).await?;
            if parsed.dhcp {
                if let Err(e) = plumb::dhcp::acquire(&guest, &spec.guest_if, parsed.dhcp_v6) {
                    let _ = wire::unwire(&host, &guest, Some(&spec.guest_if)).await;
                    return Err(e.into());
                }
            }
            if cli.json {
                serde_json::to_writer_pretty(&mut out, &wiring)?;
                writeln!(out)?;
            } else {
                let addrs: Vec<String> = wiring.addresses.iter().map(|a| a.to_string()).collect();
                writeln!(
                    out,
                    "{} {} in {} on {} ({}{}), mac {}, mtu {}{}",
                    if parsed.dhcp { "wired (dhcp)" } else { "wired" },
                    wiring.guest_if,
                    wiring.guest,
                    wiring.host_if,
                    wiring.kind,
                    wiring
                        .vlan
                        .map(|v| format!(", vlan {v}"))
                        .unwrap_or_default(),
                    wiring.mac.map(|m| m.to_string()).unwrap_or_default(),
                    wiring.mtu,
                    if addrs.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", addrs.join(" "))
                    }
                )?;
            }
        }
        Command::Del { guest, interface } => {
            let ns = guest::resolve(&guest)?;
            let removed = wire::unwire(&host, &ns, interface.as_deref()).await?;
            if cli.json {
                serde_json::to_writer(
                    &mut out,
                    &serde_json::json!({ "guest": guest, "removed": removed }),
                )?;
                writeln!(out)?;
            } else if removed.is_empty() {
                writeln!(out, "nothing wired by plumb in {guest}")?;
            } else {
                writeln!(out, "removed {} from {guest}", removed.join(", "))?;
            }
        }
        Command::Ls => {
            let wirings = wire::inventory(&host).await?;
            if cli.json {
                serde_json::to_writer_pretty(&mut out, &wirings)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:<10} {:<8} {:<12} {:<5} {:<18} ADDRESSES",
                    "GUEST", "IF", "KIND", "HOST IF", "VLAN", "MAC"
                )?;
                for w in wirings {
                    let addrs: Vec<String> = w.addresses.iter().map(|a| a.to_string()).collect();
                    writeln!(
                        out,
                        "{:<24} {:<10} {:<8} {:<12} {:<5} {:<18} {}",
                        w.guest,
                        w.guest_if,
                        w.kind,
                        w.host_if,
                        w.vlan.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                        w.mac.map(|m| m.to_string()).unwrap_or_default(),
                        addrs.join(" ")
                    )?;
                }
            }
        }
        Command::Route { guest, words } => {
            let ns = guest::resolve(&guest)?;
            let nl = Netlink::open(&ns).await?;
            let (verb, route) = Route::parse_ip_route_args(&words)?;
            match verb {
                RouteVerb::Add => nl.add_route(&route).await?,
                RouteVerb::Replace => nl.replace_route(&route).await?,
                RouteVerb::Delete => nl.delete_route(&route).await?,
                RouteVerb::Show => {
                    let mut routes = nl.routes(false, false).await?;
                    routes.extend(nl.routes(true, false).await?);
                    if cli.json {
                        serde_json::to_writer_pretty(&mut out, &routes)?;
                        writeln!(out)?;
                    } else {
                        for r in routes {
                            writeln!(out, "{r}")?;
                        }
                    }
                }
            }
        }
        Command::Apply(a) => apply::run(&host, a, cli.json, &mut out).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn pipework_form_gets_the_wire_command() {
        assert_eq!(
            with_default_command(words("plumb br1 c1 10.0.0.2/24"))[1],
            "wire"
        );
        assert_eq!(
            with_default_command(words("plumb -i eth2 br1 c1 10.0.0.2/24"))[1],
            "wire"
        );
        assert_eq!(with_default_command(words("plumb del c1"))[1], "del");
        assert_eq!(with_default_command(words("plumb --json ls"))[2], "ls");
        assert_eq!(
            with_default_command(words("plumb --help")),
            words("plumb --help")
        );
        let cli = Cli::try_parse_from(with_default_command(words(
            "plumb -i eth2 -l vc1 br1 c1 10.0.0.2/24@10.0.0.1 fd00::2/64 U:c1@10",
        )))
        .unwrap();
        let Command::Wire(w) = cli.command else {
            panic!("not wire")
        };
        assert_eq!(
            (w.interface.as_str(), w.local_name.as_deref()),
            ("eth2", Some("vc1"))
        );
        assert_eq!(w.rest.len(), 3);
    }

    #[test]
    fn apply_takes_a_file_and_its_flags() {
        let args = with_default_command(words("plumb --json apply lab.toml --prune --dry-run"));
        let cli = Cli::try_parse_from(args).unwrap();
        assert!(cli.json);
        let Command::Apply(a) = cli.command else {
            panic!("not apply")
        };
        assert_eq!(a.file, std::path::PathBuf::from("lab.toml"));
        assert!(a.prune && a.dry_run);
    }
}
