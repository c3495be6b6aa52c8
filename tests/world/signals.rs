//! Ctrl-C and SIGTERM tear the worlds down as a normal exit would.
//!
//! A signal's default action ends the process without unwinding, so no Drop
//! guard runs and every namespace of the run would stay until the next run's
//! sweep. The first world of a process therefore starts a thread that waits
//! for SIGINT or SIGTERM, tears down every live world of this process (kills
//! the processes they started, by PID, removes their namespaces, then any
//! namespace still carrying this process's prefix) and exits with 130 or 143.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once, Weak};

use plumb::Netns;
use tokio::signal::unix::{signal, SignalKind};

use crate::{Inner, PREFIX_ROOT};

/// The worlds alive in this process, for the signal thread to tear down.
/// A process-wide list because a signal is process-wide.
static LIVE: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
static START: Once = Once::new();
/// Set once a signal's teardown has begun: the world's files and namespaces
/// vanish under the code still running on other threads.
static TEARING_DOWN: AtomicBool = AtomicBool::new(false);

/// Parks the calling thread for good when a signal's teardown is under way,
/// so that an error it caused (a file or namespace pulled away) does not end
/// the process with its own exit code before the signal thread exits with
/// 130/143. Returns at once otherwise.
pub fn wait_if_torn_down_by_signal() {
    if TEARING_DOWN.load(Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

/// Registers `world` for teardown on SIGINT/SIGTERM, starting the signal
/// thread first if this is the process's first world. Returns once the
/// handlers are in place.
pub(crate) fn watch(world: &Arc<Inner>) {
    START.call_once(|| {
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("world-signals".into())
            .spawn(move || wait_and_tear_down(ready_tx))
            .expect("start the test world's signal thread");
        // A signal before the handlers exist would still kill the process
        // outright: wait until they are registered (or failed to be).
        if let Ok(Err(e)) = ready_rx.recv() {
            eprintln!("test world: no teardown on Ctrl-C ({e}); the next run sweeps what is left");
        }
    });
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(world));
}

fn wait_and_tear_down(ready: mpsc::Sender<Result<(), String>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("tokio runtime: {e}")));
            return;
        }
    };
    let code = runtime.block_on(async move {
        let handlers = signal(SignalKind::interrupt())
            .and_then(|int| Ok((int, signal(SignalKind::terminate())?)));
        let (mut int, mut term) = match handlers {
            Ok(h) => h,
            Err(e) => {
                let _ = ready.send(Err(format!("signal handlers: {e}")));
                return None;
            }
        };
        let _ = ready.send(Ok(()));
        tokio::select! {
            _ = int.recv() => Some((130, "SIGINT")),
            _ = term.recv() => Some((143, "SIGTERM")),
        }
    });
    let Some((code, name)) = code else { return };
    TEARING_DOWN.store(true, Ordering::SeqCst);
    let live: Vec<Arc<Inner>> = LIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for world in &live {
        world.tear_down();
    }
    let swept = sweep_own_prefix();
    eprintln!(
        "test world: {name}: removed {} world(s) of this run{}",
        live.len(),
        if swept > 0 {
            format!(" and {swept} namespace(s) left by the code under test")
        } else {
            String::new()
        }
    );
    std::process::exit(code);
}

/// Removes every namespace named `wt<our pid>x…`: those the code under test
/// created with a world's prefix and did not hand to it. Returns how many.
fn sweep_own_prefix() -> usize {
    let own = format!("{PREFIX_ROOT}{}x", std::process::id());
    let Ok(names) = Netns::list_named() else {
        return 0;
    };
    let mut removed = 0;
    for name in names.iter().filter(|n| n.starts_with(&own)) {
        match Netns::delete(name) {
            Ok(()) => removed += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => eprintln!("test world: could not remove namespace {name}: {e}"),
        }
    }
    removed
}
