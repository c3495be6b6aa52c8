//! CHECK sees what the conformance suite does not break: the firewall rules
//! (someone flushing the nft table) and the container's default route, with
//! the built-in IPAM and with host-local.

#[allow(dead_code)] // the conformance runner's checks are not all used here
mod cni;

use std::time::Duration;

use serde_json::json;
use world::{require_root, run_in, World};

use cni::{Ctx, Scratch};

async fn ctx(subject: &cni::Subject) -> Ctx<'_> {
    let world = World::new().await.unwrap();
    let host = world.host("h").await.unwrap();
    let scratch = Scratch::new(&format!("{}-check", world.prefix())).unwrap();
    Ctx {
        subject,
        world,
        host,
        scratch,
    }
}

fn plugin() -> std::path::PathBuf {
    match std::env::var_os("WEFT_CNI_PLUGIN") {
        Some(path) => path.into(),
        None => world::workspace_bin("weft"),
    }
}

fn sh(ctx: &Ctx, netns: &plumb::Netns, program: &str, args: &[&str]) {
    let out = run_in(netns, program, args, Duration::from_secs(10)).unwrap();
    assert!(out.success, "{program} {args:?}: {}", out.stderr);
    let _ = ctx;
}

#[tokio::test]
async fn check_fails_when_the_firewall_rules_or_the_default_route_are_gone() {
    require_root!();
    for subject in [cni::weft_builtin(plugin()), cni::weft(plugin())] {
        let ctx = ctx(&subject).await;
        let mut config = ctx.config("1.0.0");
        config["ipMasq"] = json!(true);
        config["runtimeConfig"] =
            json!({"portMappings": [{"hostPort": 18200, "containerPort": 80, "protocol": "tcp"}]});
        if subject.name == "weft" {
            config["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
        }
        let c1 = ctx.container("c1").unwrap();
        let result = ctx.add(&c1, "eth0", &config).unwrap();
        let check = cni::Ctx::with_prev(&config, &result);
        ctx.exec(&ctx.call("CHECK", &c1, "eth0", &check))
            .unwrap()
            .ok()
            .unwrap_or_else(|e| panic!("{}: CHECK right after ADD: {e:#}", subject.name));

        sh(
            &ctx,
            &ctx.host.netns,
            "nft",
            &["delete", "table", "inet", "weft"],
        );
        let msg = ctx
            .exec(&ctx.call("CHECK", &c1, "eth0", &check))
            .unwrap()
            .error_code(100)
            .unwrap();
        assert!(msg.contains("firewall rules"), "{}: {msg}", subject.name);

        // The next ADD finds the table gone when publishing its port, restores
        // the rules and every recorded port (c1's too), and succeeds; then the route.
        let c2 = ctx.container("c2").unwrap();
        let mut config2 = config.clone();
        config2["runtimeConfig"] =
            json!({"portMappings": [{"hostPort": 18201, "containerPort": 80, "protocol": "tcp"}]});
        ctx.add(&c2, "eth0", &config2).unwrap();
        ctx.exec(&ctx.call("CHECK", &c1, "eth0", &check))
            .unwrap()
            .ok()
            .unwrap_or_else(|e| panic!("{}: CHECK after the table came back: {e:#}", subject.name));
        sh(&ctx, &c1.netns, "ip", &["route", "del", "default"]);
        let msg = ctx
            .exec(&ctx.call("CHECK", &c1, "eth0", &check))
            .unwrap()
            .error()
            .unwrap();
        assert!(
            msg.to_string().contains("route") || msg.to_string().contains("default"),
            "{}: {msg}",
            subject.name
        );
    }
}
