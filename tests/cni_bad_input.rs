//! Bad input to `weft`: each case gives the spec's error code with a message
//! naming what is wrong, and leaves nothing behind — no link in the host or
//! the container, no endpoint or reservation in the state, no nft table.

#[allow(dead_code)] // the conformance runner's checks are not all used here
mod cni;

use anyhow::{ensure, Context, Result};
use serde_json::json;
use world::{ip_json, require_root, run_in, Host, World};

use cni::{Call, Ctx, Scratch};

/// What the host and the container look like, to compare before and after.
#[derive(Debug, PartialEq, Eq)]
struct Traces {
    host_links: Vec<String>,
    container_links: Vec<String>,
    nft_tables: String,
    /// netd's endpoints and reservations, when there are any.
    state: Option<String>,
}

fn link_names(netns: &plumb::Netns) -> Result<Vec<String>> {
    let mut names: Vec<String> = ip_json(netns, &["link", "show"])?
        .as_array()
        .context("ip link")?
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

fn traces(ctx: &Ctx, container: &world::Container) -> Result<Traces> {
    let nft = run_in(
        &ctx.host.netns,
        "nft",
        &["list", "tables"],
        std::time::Duration::from_secs(10),
    )?;
    ensure!(nft.success, "nft list tables: {}", nft.stderr);
    let (endpoints, owners) = cni::netd_state(&ctx.scratch.0.join("weft"))?;
    let state = (!endpoints.is_empty() || !owners.is_empty())
        .then(|| format!("endpoints {endpoints:?} reservations {owners:?}"));
    Ok(Traces {
        host_links: link_names(&ctx.host.netns)?,
        container_links: link_names(&container.netns)?,
        nft_tables: nft.stdout,
        state,
    })
}

/// No trace at all: only lo in the container, no weft table, no endpoints.
fn assert_clean(t: &Traces) -> Result<()> {
    ensure!(
        t.container_links == ["lo"],
        "container links: {:?}",
        t.container_links
    );
    ensure!(
        !t.nft_tables.contains("weft"),
        "an nft table was left: {}",
        t.nft_tables
    );
    ensure!(
        !t.host_links
            .iter()
            .any(|l| l.starts_with("wv") || l == "weftbr0"),
        "host links left: {:?}",
        t.host_links
    );
    ensure!(t.state.is_none(), "state kept something: {:?}", t.state);
    Ok(())
}

async fn ctx(subject: &cni::Subject) -> Result<(Ctx<'_>, world::Container)> {
    let world = World::new().await?;
    let host: Host = world.host("h").await?;
    let scratch = Scratch::new(&format!("{}-bad", world.prefix()))?;
    let ctx = Ctx {
        subject,
        world,
        host,
        scratch,
    };
    let c = ctx.container("c1")?;
    Ok((ctx, c))
}

fn subject() -> cni::Subject {
    let plugin = match std::env::var_os("WEFT_CNI_PLUGIN") {
        Some(path) => path.into(),
        None => world::workspace_bin("weft"),
    };
    cni::weft_builtin(plugin)
}

/// Runs `call`, expects error `code` whose msg+details contain every one of
/// `naming`, and checks nothing was left.
fn refused(ctx: &Ctx, c: &world::Container, call: &Call, code: u64, naming: &[&str]) -> Result<()> {
    let reply = ctx.exec(call)?;
    let msg = reply
        .error_code(code)
        .with_context(|| format!("stdin {}", String::from_utf8_lossy(&call.stdin)))?;
    for word in naming {
        ensure!(msg.contains(word), "message does not name {word:?}: {msg}");
    }
    let json = reply.error()?;
    ensure!(json["cniVersion"].is_string(), "no cniVersion in {json}");
    assert_clean(&traces(ctx, c)?)
}

#[tokio::test]
async fn missing_environment_variables_are_code_4_naming_them() {
    require_root!();
    let subject = subject();
    let (ctx, c) = ctx(&subject).await.unwrap();
    let config = ctx.config("1.1.0");
    for var in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        let mut call = ctx.call("ADD", &c, "eth0", &config);
        match var {
            "CNI_COMMAND" => call.command = String::new(),
            "CNI_CONTAINERID" => call.container_id = None,
            "CNI_NETNS" => call.netns = None,
            _ => call.ifname = None,
        }
        refused(&ctx, &c, &call, 4, &[var]).unwrap();
    }
    let mut gc = ctx.bare_call("GC", &config);
    gc.cni_path = None;
    refused(&ctx, &c, &gc, 4, &["CNI_PATH"]).unwrap();
}

#[tokio::test]
async fn unsupported_version_malformed_json_and_unknown_fields() {
    require_root!();
    let subject = subject();
    let (ctx, c) = ctx(&subject).await.unwrap();
    for v in ["0.2.0", "1.2.0", "2.0.0"] {
        let call = ctx.call("ADD", &c, "eth0", &ctx.config(v));
        refused(&ctx, &c, &call, 1, &[v]).unwrap();
    }
    let mut call = ctx.call("ADD", &c, "eth0", &ctx.config("1.0.0"));
    for bad in [
        &b"{\"cniVersion\": \"1.0.0\", \"name\": "[..],
        b"",
        b"[1, 2]",
        b"{\"cniVersion\": \"1.0.0\", \"name\": \"n\", \"type\": \"weft\", \"mtu\": \"big\"}",
    ] {
        call.stdin = bad.to_vec();
        refused(&ctx, &c, &call, 6, &["decode"]).unwrap();
    }
    let mut config = ctx.config("1.0.0");
    config["isgateway"] = json!(true);
    let call = ctx.call("ADD", &c, "eth0", &config);
    refused(&ctx, &c, &call, 2, &["isgateway=true"]).unwrap();
}

#[tokio::test]
async fn a_bridge_name_over_15_bytes_is_code_7() {
    require_root!();
    let subject = subject();
    let (ctx, c) = ctx(&subject).await.unwrap();
    let mut config = ctx.config("1.0.0");
    config["bridge"] = json!("weft-bridge-16by");
    let call = ctx.call("ADD", &c, "eth0", &config);
    refused(&ctx, &c, &call, 7, &["weft-bridge-16by", "15 bytes"]).unwrap();
}

/// The host's fabric is 198.18.0.0/15: a container subnet inside it (or
/// around it) would shadow the host's own traffic.
#[tokio::test]
async fn a_subnet_overlapping_the_hosts_is_code_7_naming_both() {
    require_root!();
    let subject = subject();
    let (ctx, c) = ctx(&subject).await.unwrap();
    let host_addr = format!("{}/15", ctx.host.ip);
    for subnet in ["198.18.0.0/16", "198.0.0.0/8", "198.19.255.0/24"] {
        let mut config = ctx.config("1.0.0");
        config["subnet"] = json!(subnet);
        let call = ctx.call("ADD", &c, "eth0", &config);
        refused(&ctx, &c, &call, 7, &[subnet, &host_addr, "eth0"]).unwrap();
        // STATUS says ADD cannot succeed.
        let mut status_config = config.clone();
        status_config["cniVersion"] = json!("1.1.0");
        let reply = ctx.exec(&ctx.bare_call("STATUS", &status_config)).unwrap();
        reply.error_code(50).unwrap();
    }
    // The same with a delegated IPAM: its subnet is checked too.
    let mut config = ctx.config("1.0.0");
    config["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "198.18.128.0/24"}]],
        "dataDir": ctx.scratch.0.join("ipam")});
    config.as_object_mut().unwrap().remove("subnet");
    let call = ctx.call("ADD", &c, "eth0", &config);
    refused(&ctx, &c, &call, 7, &["198.18.128.0/24", &host_addr]).unwrap();
    ensure_no_host_local_reservation(&ctx).unwrap();
}

fn ensure_no_host_local_reservation(ctx: &Ctx) -> Result<()> {
    let dir = ctx.scratch.0.join("ipam");
    let held: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .flat_map(|net| std::fs::read_dir(net.path()).into_iter().flatten())
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    ensure!(held.is_empty(), "host-local still holds {held:?}");
    Ok(())
}

#[tokio::test]
async fn a_netns_that_does_not_exist_is_code_4() {
    require_root!();
    let subject = subject();
    let (ctx, c) = ctx(&subject).await.unwrap();
    let missing = format!("/run/netns/{}-gone", ctx.world.prefix());
    let mut call = ctx.call("ADD", &c, "eth0", &ctx.config("1.0.0"));
    call.netns = Some(missing.clone());
    refused(&ctx, &c, &call, 4, &["CNI_NETNS", &missing]).unwrap();
    // With host-local: its address is not kept either (weft refuses before
    // delegating).
    let mut config = ctx.config("1.0.0");
    config["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]],
        "dataDir": ctx.scratch.0.join("ipam")});
    let mut call = ctx.call("ADD", &c, "eth0", &config);
    call.netns = Some(missing);
    refused(&ctx, &c, &call, 4, &["CNI_NETNS"]).unwrap();
    ensure_no_host_local_reservation(&ctx).unwrap();
    // The trace detector sees what a real ADD leaves (so the checks above can fail).
    ctx.add(&c, "eth0", &ctx.config("1.0.0")).unwrap();
    let after = traces(&ctx, &c).unwrap();
    let seen = assert_clean(&after).expect_err("a successful ADD left no trace the checks see");
    assert!(seen.to_string().contains("container links"), "{seen}");
    assert!(after.nft_tables.contains("weft"), "{after:?}");
    assert!(
        after.state.as_deref().is_some_and(|s| s.contains("ctr-c1")),
        "{after:?}"
    );
}
