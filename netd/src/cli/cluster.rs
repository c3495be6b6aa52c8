//! `netd cluster init|status|hosts|leave|forget|rotate-key`. `init` talks to the store
//! directly (no netd runs before the cluster exists); the others go through
//! the daemon's socket, which holds the store connection and the host's id.

use ipnetwork::{Ipv4Network, Ipv6Network};

use super::{print_json, ClientArgs};
use crate::cluster::{ClusterStatus, ForgetRequest, HostEntry};
use crate::config::cluster::{parse_store, StoreSettings};
use crate::error::{Error, Result};

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Write the cluster's config to the store, once (the same again is fine; a different one is refused).
    Init(InitArgs),
    /// This host's membership, the store's state and the counters.
    Status(ClientArgs),
    /// Every host of the cluster: name, id, subnets, alive or dead.
    Hosts(ClientArgs),
    /// Give this host's reservation back at once and stop its netd.
    Leave(ClientArgs),
    /// Remove a host that is gone (by name or id); refused while it is alive unless --force.
    Forget(ForgetArgs),
    /// Switch this host to a new overlay key without a restart and publish it (key epoch + 1).
    RotateKey(ClientArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The store: etcd://HOST:2379[,etcd://HOST2:2379…].
    #[arg(long, env = "WEFT_STORE")]
    pub store: String,
    #[arg(long, env = "WEFT_STORE_CA")]
    pub store_ca: Option<std::path::PathBuf>,
    #[arg(long, env = "WEFT_STORE_CERT")]
    pub store_cert: Option<std::path::PathBuf>,
    #[arg(long, env = "WEFT_STORE_KEY")]
    pub store_key: Option<std::path::PathBuf>,
    /// The store's user; the password comes from WEFT_STORE_PASSWORD.
    #[arg(long, env = "WEFT_STORE_USER")]
    pub store_user: Option<String>,
    /// The cluster's IPv4 range, cut into one subnet per host.
    #[arg(long)]
    pub range: Ipv4Network,
    /// The cluster's IPv6 range (containers then get IPv6 too).
    #[arg(long)]
    pub range6: Option<Ipv6Network>,
    #[arg(long, default_value_t = 24)]
    pub subnet_len: u8,
    #[arg(long, default_value_t = 64)]
    pub subnet6_len: u8,
    /// The overlay's UDP port on every host.
    #[arg(long, default_value_t = ::overlay::DEFAULT_PORT)]
    pub port: u16,
}

#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The host's name or id (`netd cluster hosts`).
    pub host: String,
    /// Forget it even though it shows alive.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Init(args) => init(args).await,
        ClusterCommand::Status(args) => {
            let s: ClusterStatus = args.client().get("/v1/cluster/status").await?;
            if args.json {
                print_json(&s);
                return Ok(());
            }
            let subnets: Vec<String> = s.subnets.iter().map(|n| n.to_string()).collect();
            println!("host:        {} ({})", s.host_name, s.host_id);
            println!("subnets:     {}", subnets.join(", "));
            println!("endpoint:    {}", s.endpoint.as_deref().unwrap_or("(none)"));
            println!("key epoch:   {}", s.key_epoch);
            if !s.joined {
                println!(
                    "joined:      NO — running on the view saved in the state directory{}",
                    s.join_error
                        .as_ref()
                        .map(|e| format!(" (last try: {e})"))
                        .unwrap_or_default()
                );
            }
            println!(
                "store:       {} {}{}",
                s.store,
                if s.store_up { "up" } else { "DOWN" },
                s.store_last_error
                    .as_ref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            );
            println!(
                "hosts:       {} alive, {} dead; subnets {} of {}",
                s.hosts_alive, s.hosts_dead, s.subnets_in_use, s.subnet_capacity
            );
            println!(
                "counters:    {} re-lists, {} keep-alive failures, {} lease re-grants, {} applies ({} errors), last {:.1} ms",
                s.watch_relists,
                s.keep_alive_failures,
                s.lease_regrants,
                s.applies,
                s.apply_errors,
                s.last_apply_ms.unwrap_or(0.0)
            );
            println!(
                "names:       {} puts ({} failed), {} re-lists, {} keys ignored, {} records refused",
                s.names.puts,
                s.names.put_failures,
                s.names.relists,
                s.names.bad_data,
                s.names.refused
            );
            for (reason, n) in &s.bad_data {
                println!("bad data:    {reason} {n}");
            }
            Ok(())
        }
        ClusterCommand::Hosts(args) => {
            let hosts: Vec<HostEntry> = args.client().get("/v1/cluster/hosts").await?;
            if args.json {
                print_json(&hosts);
                return Ok(());
            }
            println!(
                "{:<16}  {:<32}  {:<5}  {:<21}  SUBNETS",
                "NAME", "ID", "STATE", "ENDPOINT"
            );
            for h in &hosts {
                let subnets: Vec<String> = h.subnets.iter().map(|n| n.to_string()).collect();
                println!(
                    "{:<16}  {:<32}  {:<5}  {:<21}  {}{}",
                    h.name,
                    h.id,
                    if h.alive { "alive" } else { "dead" },
                    h.endpoint.as_deref().unwrap_or("-"),
                    subnets.join(","),
                    if h.this_host { "  (this host)" } else { "" }
                );
            }
            Ok(())
        }
        ClusterCommand::Leave(args) => {
            let record: serde_json::Value = args.client().post("/v1/cluster/leave", &()).await?;
            if args.json {
                print_json(&record);
            } else {
                println!("left the cluster; netd stops; the subnets are free");
            }
            Ok(())
        }
        ClusterCommand::RotateKey(args) => {
            let record: serde_json::Value =
                args.client().post("/v1/cluster/rotate-key", &()).await?;
            if args.json {
                print_json(&record);
            } else {
                println!(
                    "new overlay key {} (key epoch {}); the other hosts switch when they see it",
                    record["public_key"].as_str().unwrap_or("?"),
                    record["key_epoch"]
                );
            }
            Ok(())
        }
        ClusterCommand::Forget(args) => {
            let body = ForgetRequest {
                host: args.host.clone(),
                force: args.force,
            };
            let record: serde_json::Value = args
                .client
                .client()
                .post("/v1/cluster/forget", &body)
                .await?;
            if args.client.json {
                print_json(&record);
            } else {
                println!("forgot host {}; its subnets are free", args.host);
            }
            Ok(())
        }
    }
}

async fn init(args: InitArgs) -> Result<()> {
    let settings = StoreSettings {
        endpoints: parse_store(&args.store)?,
        ca: args.store_ca,
        cert: args.store_cert,
        key: args.store_key,
        password: match &args.store_user {
            Some(_) => Some(std::env::var("WEFT_STORE_PASSWORD").map_err(|_| {
                Error::InvalidInput("--store-user needs WEFT_STORE_PASSWORD".into())
            })?),
            None => None,
        },
        user: args.store_user,
    };
    let store = crate::cluster::open_store(&settings)?;
    let config = ::overlay::cluster::ClusterConfig {
        ipv4_range: args.range,
        ipv4_subnet_len: args.subnet_len,
        ipv6_range: args.range6,
        ipv6_subnet_len: args.range6.map(|_| args.subnet6_len),
        overlay_port: args.port,
    };
    let written = ::overlay::cluster::init(&store, &config).await?;
    println!(
        "{} the cluster config in {}: {}",
        if written { "wrote" } else { "already had" },
        settings.endpoints.join(","),
        serde_json::to_string(&config).expect("a config serializes")
    );
    Ok(())
}
