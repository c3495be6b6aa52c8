//! The named checks, one per point of the CNI spec (and weft's checklist).
//! Each says what the spec asks in its name; the code reads like the spec.

use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use world::{ip_json, Container, Host};

use super::{container_id, netns_path, Check, Ctx, Needs, VERSIONS};

/// Every check, in the order the table prints them.
pub fn all() -> Vec<Check> {
    let mut checks = vec![Check::new(
        "version/answers-each-version",
        Needs::Protocol,
        version_answers_each_version,
    )];
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        checks.push(Check::new(
            format!("env/add-without-{var}-is-code-4"),
            Needs::Protocol,
            move |ctx| add_without_var(ctx, var),
        ));
    }
    checks.extend([
        Check::new("env/no-command-is-code-4", Needs::Protocol, no_command),
        Check::new(
            "env/unknown-command-is-code-4",
            Needs::Protocol,
            unknown_command,
        ),
        Check::new(
            "env/del-without-CNI_IFNAME-is-code-4",
            Needs::Protocol,
            del_without_ifname,
        ),
        Check::new(
            "env/gc-without-CNI_PATH-is-code-4",
            Needs::Protocol,
            gc_without_cni_path,
        ),
        Check::new(
            "env/ifname-over-15-bytes-fails",
            Needs::Protocol,
            ifname_too_long,
        ),
        Check::new(
            "config/unsupported-version-is-code-1",
            Needs::Protocol,
            unsupported_version,
        ),
        Check::new(
            "config/malformed-json-is-code-6",
            Needs::Protocol,
            malformed_json,
        ),
        Check::new(
            "config/missing-name-is-code-7",
            Needs::Protocol,
            missing_name,
        ),
        Check::new(
            "error/result-carries-cniVersion",
            Needs::Protocol,
            error_carries_version,
        ),
        Check::new(
            "add/missing-netns-fails-and-keeps-nothing",
            Needs::Network,
            add_missing_netns,
        ),
    ]);
    for v in VERSIONS {
        checks.push(Check::new(
            format!("lifecycle/{v}"),
            Needs::Network,
            move |ctx| lifecycle(ctx, v),
        ));
    }
    checks.extend([
        Check::new(
            "add/existing-interface-fails-and-keeps-nothing",
            Needs::Network,
            add_existing_interface,
        ),
        Check::new(
            "add/second-interface-same-container",
            Needs::Network,
            add_second_interface,
        ),
        Check::new(
            "check/detects-missing-interface",
            Needs::Network,
            check_missing_interface,
        ),
        Check::new(
            "check/detects-missing-address",
            Needs::Network,
            check_missing_address,
        ),
        Check::new("del/twice-succeeds", Needs::Network, del_twice),
        Check::new("del/never-added-succeeds", Needs::Network, del_never_added),
        Check::new(
            "del/without-prevResult-releases-address",
            Needs::Network,
            del_without_prev,
        ),
        Check::new(
            "del/after-netns-gone-releases-address",
            Needs::Network,
            del_after_netns_gone,
        ),
        Check::new(
            "del/without-CNI_NETNS-releases-address",
            Needs::Network,
            del_without_netns,
        ),
        Check::new(
            "gc/releases-all-but-valid-attachments",
            Needs::Network,
            gc_valid_attachments,
        ),
        Check::new("status/ready-is-exit-0", Needs::Network, status_ready),
        Check::new(
            "add/50-parallel-get-distinct-addresses",
            Needs::Network,
            parallel_adds,
        ),
    ]);
    checks
}

// ---- protocol ----

fn version_answers_each_version(ctx: &Ctx) -> Result<()> {
    for v in VERSIONS {
        let reply = ctx.exec(&ctx.bare_call("VERSION", &json!({"cniVersion": v})))?;
        let out = reply.result().with_context(|| format!("VERSION {v}"))?;
        ensure!(
            out["cniVersion"] == v,
            "VERSION {v}: cniVersion not echoed: {out}"
        );
        let supported: BTreeSet<&str> = out["supportedVersions"]
            .as_array()
            .context("no supportedVersions")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let missing: Vec<&str> = VERSIONS
            .iter()
            .copied()
            .filter(|v| !supported.contains(v))
            .collect();
        ensure!(
            missing.is_empty(),
            "supportedVersions lacks {missing:?}: {out}"
        );
    }
    Ok(())
}

fn add_without_var(ctx: &Ctx, var: &str) -> Result<()> {
    let c = ctx.container("c1")?;
    let mut call = ctx.call("ADD", &c, "eth0", &ctx.config("1.0.0"));
    match var {
        "CNI_CONTAINERID" => call.container_id = None,
        "CNI_NETNS" => call.netns = None,
        _ => call.ifname = None,
    }
    let msg = ctx.exec(&call)?.error_code(4)?;
    ensure!(msg.contains(var), "the message does not name {var}: {msg}");
    ensure!(links(&c)? == ["lo"], "the container got links anyway");
    Ok(())
}

fn no_command(ctx: &Ctx) -> Result<()> {
    let c = ctx.container("c1")?;
    let mut call = ctx.call("", &c, "eth0", &ctx.config("1.0.0"));
    call.command = String::new();
    let msg = ctx.exec(&call)?.error_code(4)?;
    ensure!(
        msg.contains("CNI_COMMAND"),
        "the message does not name CNI_COMMAND: {msg}"
    );
    Ok(())
}

fn unknown_command(ctx: &Ctx) -> Result<()> {
    let c = ctx.container("c1")?;
    ctx.exec(&ctx.call("UPDATE", &c, "eth0", &ctx.config("1.0.0")))?
        .error_code(4)?;
    Ok(())
}

fn del_without_ifname(ctx: &Ctx) -> Result<()> {
    let c = ctx.container("c1")?;
    let mut call = ctx.call("DEL", &c, "eth0", &ctx.config("1.0.0"));
    call.ifname = None;
    let msg = ctx.exec(&call)?.error_code(4)?;
    ensure!(
        msg.contains("CNI_IFNAME"),
        "the message does not name CNI_IFNAME: {msg}"
    );
    Ok(())
}

fn gc_without_cni_path(ctx: &Ctx) -> Result<()> {
    let mut config = ctx.config("1.1.0");
    config["cni.dev/valid-attachments"] = json!([]);
    let mut call = ctx.bare_call("GC", &config);
    call.cni_path = None;
    let msg = ctx.exec(&call)?.error_code(4)?;
    ensure!(
        msg.contains("CNI_PATH"),
        "the message does not name CNI_PATH: {msg}"
    );
    Ok(())
}

fn ifname_too_long(ctx: &Ctx) -> Result<()> {
    let c = ctx.container("c1")?;
    let before = host_veths(&ctx.host)?;
    ctx.exec(&ctx.call("ADD", &c, "sixteen-bytes-xx", &ctx.config("1.0.0")))?
        .error()?;
    ensure!(links(&c)? == ["lo"], "the container got links anyway");
    ensure!(
        host_veths(&ctx.host)? == before,
        "a host veth was left behind"
    );
    Ok(())
}

fn unsupported_version(ctx: &Ctx) -> Result<()> {
    let c = ctx.container("c1")?;
    for v in ["2.0.0", "0.9.0"] {
        ctx.exec(&ctx.call("ADD", &c, "eth0", &ctx.config(v)))?
            .error_code(1)
            .with_context(|| format!("cniVersion {v}"))?;
    }
    ensure!(links(&c)? == ["lo"], "the container got links anyway");
    Ok(())
}

fn malformed_json(ctx: &Ctx) -> Result<()> {
    let c = ctx.container("c1")?;
    let mut call = ctx.call("ADD", &c, "eth0", &ctx.config("1.0.0"));
    call.stdin = br#"{"cniVersion": "1.0.0", "name": "x", "type": "#.to_vec();
    ctx.exec(&call)?.error_code(6)?;
    Ok(())
}

fn missing_name(ctx: &Ctx) -> Result<()> {
    let c = ctx.container("c1")?;
    let mut config = ctx.config("1.0.0");
    config.as_object_mut().unwrap().remove("name");
    ctx.exec(&ctx.call("ADD", &c, "eth0", &config))?
        .error_code(7)?;
    Ok(())
}

/// SPEC.md section 5, "Error": `cniVersion` is one of the error's keys.
fn error_carries_version(ctx: &Ctx) -> Result<()> {
    let c = ctx.container("c1")?;
    let mut call = ctx.call("ADD", &c, "eth0", &ctx.config("1.0.0"));
    call.ifname = None;
    let err = ctx.exec(&call)?.error()?;
    ensure!(
        err["cniVersion"] == "1.0.0",
        "error result without the request's cniVersion: {err}"
    );
    Ok(())
}

// ---- ADD and the lifecycle ----

/// A netns path that does not exist: an error, and no address kept (the
/// one-address range is free for the next ADD).
fn add_missing_netns(ctx: &Ctx) -> Result<()> {
    let config = ctx.config_with("1.0.0", Some((10, 10)));
    let c = ctx.container("c1")?;
    let mut call = ctx.call("ADD", &c, "eth0", &config);
    call.netns = Some(format!("/run/netns/{}-nope", ctx.world.prefix()));
    call.container_id = Some("ctr-ghost".into());
    ctx.exec(&call)?.error()?;
    let result = ctx
        .add(&c, "eth0", &config)
        .context("the address was kept by the failed ADD")?;
    ensure!(first_address(&result)? == "10.77.0.10/24");
    Ok(())
}

/// ADD, the result's shape for `version`, the kernel's view, CHECK, DEL.
fn lifecycle(ctx: &Ctx, version: &str) -> Result<()> {
    let c = ctx.container("c1")?;
    let config = ctx.config(version);
    let result = ctx.add(&c, "eth0", &config)?;
    ensure!(
        result["cniVersion"] == version,
        "result cniVersion {} for a {version} request",
        result["cniVersion"]
    );
    let interfaces = result["interfaces"].as_array().context("no interfaces")?;
    let sandbox = netns_path(&c);
    let index = interfaces
        .iter()
        .position(|i| i["name"] == "eth0" && i["sandbox"] == sandbox.as_str())
        .with_context(|| format!("no interface eth0 with sandbox {sandbox}: {result}"))?;
    let ips = result["ips"].as_array().context("no ips")?;
    ensure!(!ips.is_empty(), "no ips");
    for ip in ips {
        ensure!(
            ip["interface"] == index,
            "ips entry not pointing at eth0 ({index}): {ip}"
        );
        let has_version = ip.get("version").is_some();
        if version.starts_with("0.") {
            ensure!(
                ip["version"] == "4",
                "{version} needs ips[].version \"4\": {ip}"
            );
        } else {
            ensure!(!has_version, "{version} has no ips[].version: {ip}");
        }
    }
    let address = first_address(&result)?;
    let in_kernel = addresses(&c, "eth0")?.context("eth0 missing in the container")?;
    ensure!(
        in_kernel.contains(&address),
        "eth0 has {in_kernel:?}, result says {address}"
    );
    let mac = ip_json(&c.netns, &["link", "show", "eth0"])?[0]["address"].clone();
    ensure!(
        interfaces[index]["mac"] == mac,
        "result mac {} but eth0 has {mac}",
        interfaces[index]["mac"]
    );

    let with_prev = Ctx::with_prev(&config, &result);
    if version != "0.3.0" && version != "0.3.1" {
        ctx.exec(&ctx.call("CHECK", &c, "eth0", &with_prev))?
            .ok()
            .context("CHECK right after ADD")?;
    }
    ctx.exec(&ctx.call("DEL", &c, "eth0", &with_prev))?
        .ok()
        .context("DEL")?;
    ensure!(
        addresses(&c, "eth0")?.is_none(),
        "eth0 still in the container after DEL"
    );
    Ok(())
}

/// SPEC.md, ADD: "If an interface of the requested name already exists in the
/// container, the CNI plugin MUST return with an error." Nothing may be kept.
fn add_existing_interface(ctx: &Ctx) -> Result<()> {
    let config = ctx.config_with("1.0.0", Some((10, 10)));
    let c1 = ctx.container("c1")?;
    sh_in(
        &c1,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
        ],
    )?;
    let before = host_veths(&ctx.host)?;
    ctx.exec(&ctx.call("ADD", &c1, "eth0", &config))?.error()?;
    let eth0 = ip_json(&c1.netns, &["-d", "link", "show", "eth0"])?;
    ensure!(
        eth0[0]["linkinfo"]["info_slave_kind"].is_null(),
        "the existing eth0 was taken over"
    );
    ensure!(
        addresses(&c1, "eth0")? == Some(vec![]),
        "the existing eth0 got an address"
    );
    ensure!(
        host_veths(&ctx.host)? == before,
        "a host veth was left behind"
    );
    let c2 = ctx.container("c2")?;
    let result = ctx
        .add(&c2, "eth0", &config)
        .context("the failed ADD kept the only address")?;
    ensure!(first_address(&result)? == "10.77.0.10/24");
    Ok(())
}

/// One container, two attachments (eth0, eth1): distinct addresses, and DEL of
/// one leaves the other.
fn add_second_interface(ctx: &Ctx) -> Result<()> {
    let config = ctx.config("1.0.0");
    let c = ctx.container("c1")?;
    let r0 = ctx.add(&c, "eth0", &config)?;
    let r1 = ctx.add(&c, "eth1", &config)?;
    ensure!(
        first_address(&r0)? != first_address(&r1)?,
        "both interfaces got one address"
    );
    ctx.exec(&ctx.call("DEL", &c, "eth1", &Ctx::with_prev(&config, &r1)))?
        .ok()?;
    ensure!(addresses(&c, "eth1")?.is_none(), "eth1 survived its DEL");
    ensure!(
        addresses(&c, "eth0")?.is_some_and(|a| a.contains(&first_address(&r0).unwrap())),
        "eth0 was hurt by eth1's DEL"
    );
    Ok(())
}

fn check_missing_interface(ctx: &Ctx) -> Result<()> {
    let config = ctx.config("1.0.0");
    let c = ctx.container("c1")?;
    let result = ctx.add(&c, "eth0", &config)?;
    sh_in(&c, &["link", "del", "eth0"])?;
    ctx.exec(&ctx.call("CHECK", &c, "eth0", &Ctx::with_prev(&config, &result)))?
        .error()
        .context("CHECK passed with eth0 gone")?;
    Ok(())
}

fn check_missing_address(ctx: &Ctx) -> Result<()> {
    let config = ctx.config("1.0.0");
    let c = ctx.container("c1")?;
    let result = ctx.add(&c, "eth0", &config)?;
    sh_in(
        &c,
        &["addr", "del", &first_address(&result)?, "dev", "eth0"],
    )?;
    ctx.exec(&ctx.call("CHECK", &c, "eth0", &Ctx::with_prev(&config, &result)))?
        .error()
        .context("CHECK passed with eth0's address gone")?;
    Ok(())
}

// ---- DEL ----

fn del_twice(ctx: &Ctx) -> Result<()> {
    let config = ctx.config("1.0.0");
    let c = ctx.container("c1")?;
    let result = ctx.add(&c, "eth0", &config)?;
    let del = ctx.call("DEL", &c, "eth0", &Ctx::with_prev(&config, &result));
    ctx.exec(&del)?.ok().context("first DEL")?;
    ctx.exec(&del)?.ok().context("second DEL")?;
    Ok(())
}

fn del_never_added(ctx: &Ctx) -> Result<()> {
    let c = ctx.container("c1")?;
    ctx.exec(&ctx.call("DEL", &c, "eth0", &ctx.config("1.0.0")))?
        .ok()
        .context("DEL of an attachment that never was")
}

/// ADD c1 takes the only address; DEL without prevResult must release it for c2.
fn del_without_prev(ctx: &Ctx) -> Result<()> {
    released_by(ctx, |ctx, c1, config| {
        ctx.exec(&ctx.call("DEL", c1, "eth0", config))?.ok()
    })
}

fn del_after_netns_gone(ctx: &Ctx) -> Result<()> {
    released_by(ctx, |ctx, c1, config| {
        plumb::Netns::delete(&c1.netns_name)?;
        ensure!(!std::path::Path::new(&netns_path(c1)).exists());
        ctx.exec(&ctx.call("DEL", c1, "eth0", config))?.ok()
    })
}

fn del_without_netns(ctx: &Ctx) -> Result<()> {
    released_by(ctx, |ctx, c1, config| {
        let mut call = ctx.call("DEL", c1, "eth0", config);
        call.netns = None;
        ctx.exec(&call)?.ok()
    })
}

/// ADD c1 on a one-address range, `del` it, then ADD c2 must get that address.
fn released_by(ctx: &Ctx, del: impl Fn(&Ctx, &Container, &Value) -> Result<()>) -> Result<()> {
    let config = ctx.config_with("1.0.0", Some((10, 10)));
    let c1 = ctx.container("c1")?;
    let c2 = ctx.container("c2")?;
    let first = ctx.add(&c1, "eth0", &config)?;
    ensure!(first_address(&first)? == "10.77.0.10/24");
    // The range is full: c2 must be refused while c1 holds the address.
    ctx.exec(&ctx.call("ADD", &c2, "eth0", &config))?
        .error()
        .context("a full range handed out an address twice")?;
    ctx.exec(&ctx.call("DEL", &c2, "eth0", &config))?
        .ok()
        .context("DEL after the failed ADD")?;
    del(ctx, &c1, &config).context("DEL")?;
    let second = ctx
        .add(&c2, "eth0", &config)
        .context("the address was not released")?;
    ensure!(first_address(&second)? == "10.77.0.10/24");
    Ok(())
}

// ---- GC, STATUS ----

/// GC with c1 valid and c2 not: c2's address is free again, c1's is not.
fn gc_valid_attachments(ctx: &Ctx) -> Result<()> {
    let config = ctx.config_with("1.1.0", Some((10, 11)));
    let c1 = ctx.container("c1")?;
    let c2 = ctx.container("c2")?;
    let c3 = ctx.container("c3")?;
    let c4 = ctx.container("c4")?;
    let r1 = ctx.add(&c1, "eth0", &config)?;
    let r2 = ctx.add(&c2, "eth0", &config)?;
    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": container_id(&c1), "ifname": "eth0"}]);
    let reply = ctx.exec(&ctx.bare_call("GC", &gc))?;
    reply.ok().context("GC")?;
    ensure!(
        reply.stdout.trim().is_empty(),
        "GC printed {:?}",
        reply.stdout
    );
    let r3 = ctx
        .add(&c3, "eth0", &config)
        .context("GC did not release c2's address")?;
    ensure!(
        first_address(&r3)? == first_address(&r2)?,
        "c3 got {}, not c2's",
        first_address(&r3)?
    );
    ctx.exec(&ctx.call("ADD", &c4, "eth0", &config))?
        .error()
        .context("GC released the valid attachment's address too")?;
    ctx.exec(&ctx.call("CHECK", &c1, "eth0", &Ctx::with_prev(&config, &r1)))?
        .ok()
        .context("the valid attachment fails CHECK after GC")?;
    Ok(())
}

fn status_ready(ctx: &Ctx) -> Result<()> {
    let reply = ctx.exec(&ctx.bare_call("STATUS", &ctx.config("1.1.0")))?;
    reply.ok().context("STATUS")?;
    ensure!(
        reply.stdout.trim().is_empty(),
        "STATUS printed {:?}",
        reply.stdout
    );
    Ok(())
}

// ---- concurrency ----

/// SPEC.md section 3: plugins must handle concurrent calls for different
/// containers; two ADDs never get one address.
fn parallel_adds(ctx: &Ctx) -> Result<()> {
    const N: usize = 50;
    let config = ctx.config("1.0.0");
    let containers: Vec<Container> = (0..N)
        .map(|i| ctx.container(&format!("p{i}")))
        .collect::<Result<_>>()?;
    let results: Vec<Result<Value>> = std::thread::scope(|s| {
        let handles: Vec<_> = containers
            .iter()
            .map(|c| s.spawn(|| ctx.add(c, "eth0", &config)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let mut seen = BTreeSet::new();
    let mut failures = Vec::new();
    for (c, r) in containers.iter().zip(&results) {
        match r {
            Ok(result) => {
                let a = first_address(result)?;
                ensure!(seen.insert(a.clone()), "{a} handed out twice");
            }
            Err(e) => failures.push(format!("{}: {e:#}", c.name)),
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {N} parallel ADDs failed: {}",
        failures.len(),
        failures.join(" | ")
    );
    let dels: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = containers
            .iter()
            .zip(&results)
            .map(|(c, r)| {
                let config = Ctx::with_prev(&config, r.as_ref().unwrap());
                s.spawn(move || ctx.exec(&ctx.call("DEL", c, "eth0", &config))?.ok())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("DEL thread"))
            .collect()
    });
    let failed = dels.iter().filter(|d| d.is_err()).count();
    ensure!(failed == 0, "{failed} of {N} parallel DELs failed");
    Ok(())
}

// ---- the kernel's view, through iproute2 ----

fn links(c: &Container) -> Result<Vec<String>> {
    Ok(ip_json(&c.netns, &["link", "show"])?
        .as_array()
        .context("ip link")?
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect())
}

/// The addresses on `ifname` in `c` (prefix included), `None` when it does not exist.
fn addresses(c: &Container, ifname: &str) -> Result<Option<Vec<String>>> {
    if !links(c)?.iter().any(|l| l == ifname) {
        return Ok(None);
    }
    let info = ip_json(&c.netns, &["addr", "show", "dev", ifname])?;
    Ok(Some(
        info[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x["scope"] != "link")
                    .map(|x| format!("{}/{}", x["local"].as_str().unwrap_or(""), x["prefixlen"]))
                    .collect()
            })
            .unwrap_or_default(),
    ))
}

/// How many veths the host has.
fn host_veths(host: &Host) -> Result<usize> {
    Ok(ip_json(&host.netns, &["-d", "link", "show"])?
        .as_array()
        .context("ip link")?
        .iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "veth" && l["ifname"] != "eth0")
        .count())
}

/// `ip ARGS` inside a container namespace (a test namespace, never the root one).
fn sh_in(c: &Container, args: &[&str]) -> Result<()> {
    let out = world_run(c, args)?;
    if !out.success {
        bail!("ip {}: {}", args.join(" "), out.stderr.trim());
    }
    Ok(())
}

fn world_run(c: &Container, args: &[&str]) -> Result<world::CommandOutput> {
    let output = c
        .netns
        .run(|| std::process::Command::new("ip").args(args).output())??;
    Ok(world::CommandOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn first_address(result: &Value) -> Result<String> {
    result["ips"][0]["address"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no ips[0].address in {result}"))
}
