//! containerd 1.6 (Debian): `ctr run --rm --cni` on a weft network, with a
//! private containerd (own root, state and socket) started inside a
//! simulated host's namespace. ctr reads CNI configs only from
//! /etc/cni/net.d: it runs in a mount namespace of its own where that
//! directory (and /usr/lib/cni) are the test's, so the system's stay untouched.

#[allow(dead_code)] // the conformance runner's checks are not all used here
mod cni;
mod runtime_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use serde_json::json;
use world::{require_root, World};

use cni::Scratch;
use runtime_support::{Containerd, Podman, IMAGE};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test]
async fn ctr_run_cni_on_a_weft_network_reaches_another_host() {
    require_root!();
    assert!(
        std::path::Path::new("/usr/bin/containerd").exists(),
        "containerd missing: scripts/install-deps --test"
    );
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let scratch = Scratch::new(&format!("{}-ctrd", world.prefix())).unwrap();
    let state = scratch.0.join("weft");

    // The image: busybox-static imported by podman, saved, imported by ctr.
    let image_tar = scratch.0.join("image.tar");
    {
        let podman = Podman::new(&scratch.0.join("p"), &a.netns).unwrap();
        podman
            .run(
                &["save", "-o", &image_tar.display().to_string(), IMAGE],
                LONG,
            )
            .unwrap()
            .ok("podman save")
            .unwrap();
    }
    let containerd = Containerd::start(&scratch.0.join("c"), &a.netns, |c| a.spawn(c)).unwrap();
    containerd
        .ctr(
            &[
                "images",
                "import",
                "--snapshotter",
                "native",
                &image_tar.display().to_string(),
            ],
            LONG,
        )
        .unwrap()
        .ok("ctr images import")
        .unwrap();
    containerd
        .network(&json!({
            "cniVersion": "1.0.0",
            "name": "weftctr",
            "plugins": [{"type": "weft", "mode": "standalone", "bridge": "weftctr0",
                         "subnet": "10.82.0.0/24", "stateDir": state}]
        }))
        .unwrap();

    // An echo server on host b; the container reaches it through weft's
    // bridge and masquerade.
    let listen = SocketAddr::new(b.ip_addr(), 9099);
    let listener = b
        .netns
        .run(move || TcpListener::bind(listen))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || -> std::io::Result<String> {
        let (mut conn, peer) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf)?;
        conn.write_all(&buf[..n])?;
        Ok(format!("{peer}"))
    });
    let out = containerd
        .ctr(
            &[
                "run",
                "--rm",
                "--cni",
                "--snapshotter",
                "native",
                IMAGE,
                "c1",
                "sh",
                "-c",
                &format!(
                    "ip -4 addr show eth0; echo hello-ctr | nc -w 3 {} 9099",
                    b.ip
                ),
            ],
            LONG,
        )
        .unwrap()
        .ok("ctr run --cni")
        .unwrap();
    let peer = server.join().unwrap().unwrap();
    assert!(
        out.contains("inet 10.82.0."),
        "no weft address in the container: {out}"
    );
    assert!(out.contains("hello-ctr"), "no echo from host b: {out}");
    assert!(
        peer.starts_with(&a.ip.to_string()),
        "host b saw {peer}, not host a's address (masquerade)"
    );

    // --rm ran DEL: weft's state holds no endpoint.
    let (endpoints, owners) = cni::netd_state(&state).unwrap();
    assert!(
        endpoints.is_empty() && owners.is_empty(),
        "left after ctr run --rm: {endpoints:?} {owners:?}"
    );
}
