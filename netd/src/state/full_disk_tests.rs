//! Writing state on a full file system or a read-only directory: the
//! transaction fails with the kernel's reason, nothing of it is left in the
//! files, and the store's copy in memory stays what the files hold.
//!
//! The worker runs in a private mount namespace (`unshare --mount
//! --propagation private`), where it mounts a small tmpfs and a read-only
//! bind mount of it: nothing is mounted where the rest of the machine sees it.

use std::path::Path;
use std::process::Command;

use super::store::JOURNAL_FILE;
use super::*;

const WORKER_ENV: &str = "WEFT_TEST_FULL_DISK_DIR";

fn endpoint(id: &str) -> Endpoint {
    Endpoint::for_tests(id, &format!("name-{id}"), 1, &[])
}

fn add(store: &Store, id: &str) -> Result<(), StoreError> {
    store.update(|s| -> Result<(), StoreError> {
        s.endpoints.insert(id.into(), endpoint(id).into());
        Ok(())
    })
}

fn journal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(JOURNAL_FILE)).map_or(0, |m| m.len())
}

fn mount(args: &[&str]) {
    let out = Command::new("mount").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_full_disk_or_a_read_only_directory_fails_the_write_cleanly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to mount a tmpfs in a private mount namespace");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(&exe)
        .args([
            "--exact",
            "state::full_disk_tests::full_disk_worker",
            "--ignored",
            "--nocapture",
        ])
        .env(WORKER_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the worker failed or did not run:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing the worker mounted is seen out here.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// The worker half of the test above; does nothing unless run by it.
#[test]
#[ignore = "run by a_full_disk_or_a_read_only_directory_fails_the_write_cleanly"]
fn full_disk_worker() {
    let Some(dir) = std::env::var_os(WORKER_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    mount(&[
        "-t",
        "tmpfs",
        "-o",
        "size=128k",
        "weft-test",
        dir.to_str().unwrap(),
    ]);
    let state_dir = dir.join("state");
    let store = Store::open(&state_dir).unwrap();
    // Bring the journal's end close to a page boundary, so that the next
    // record needs a page the full tmpfs does not have.
    let mut i = 0;
    while i < 3 || 4096 - journal_len(&state_dir) % 4096 > 120 {
        add(&store, &format!("c{i}")).unwrap();
        i += 1;
    }
    let before = store.read().unwrap();
    let len = journal_len(&state_dir);
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let full = loop {
        if let Err(e) = std::io::Write::write_all(&mut file, &[0u8; 4096]) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");

    let err = add(&store, "x").unwrap_err();
    assert!(
        err.to_string().contains("append to") && err.to_string().contains("No space left"),
        "{err}"
    );
    assert_eq!(
        journal_len(&state_dir),
        len,
        "a part of the record was left"
    );
    assert_eq!(store.read().unwrap(), before, "memory and disk differ");
    assert_eq!(Store::open(&state_dir).unwrap().read().unwrap(), before);

    drop(file);
    std::fs::remove_file(&filler).unwrap();
    add(&store, "x").unwrap();
    let fresh = Store::open(&state_dir).unwrap().read().unwrap();
    assert!(fresh.endpoints.contains_key("x"));
    assert_eq!(store.read().unwrap(), fresh);

    // The same files through a read-only bind mount: read, never written.
    let read_only = dir.join("ro");
    std::fs::create_dir(&read_only).unwrap();
    mount(&[
        "--bind",
        state_dir.to_str().unwrap(),
        read_only.to_str().unwrap(),
    ]);
    mount(&["-o", "remount,bind,ro", read_only.to_str().unwrap()]);
    let ro = Store::open(&read_only).unwrap();
    assert_eq!(ro.read().unwrap(), fresh);
    let err = add(&ro, "y").unwrap_err();
    assert!(err.to_string().contains("Read-only file system"), "{err}");
    assert_eq!(ro.read().unwrap(), fresh, "memory and disk differ");
    assert_eq!(Store::open(&state_dir).unwrap().read().unwrap(), fresh);
}
