//! libnftables in-process: the same `nft -f -` transaction without a fork and
//! an exec. On the test machine a change costs ~0.2 ms this way against ~2 ms
//! through the `nft` binary, most of it the exec and the dynamic loading.
//!
//! The library is opened with `dlopen` at first use, so plumb builds without
//! its headers and still works without it: `run` answers `None` and the
//! caller runs the binary. A context is created on a thread that has entered
//! the namespace (its netlink socket lives there), and one call runs at a time
//! in the process: libnftables keeps global state.
//!
//! The last context is kept for the next call in the same namespace instead
//! of being freed after each transaction, for the reason in [`super::kept`].

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

use super::kept::Kept;
use crate::error::Result;
use crate::netns::Netns;

/// The functions of libnftables(3) weft uses.
struct Library {
    ctx_new: unsafe extern "C" fn(u32) -> *mut c_void,
    ctx_free: unsafe extern "C" fn(*mut c_void),
    buffer_output: unsafe extern "C" fn(*mut c_void) -> c_int,
    buffer_error: unsafe extern "C" fn(*mut c_void) -> c_int,
    error_buffer: unsafe extern "C" fn(*mut c_void) -> *const c_char,
    output_buffer: unsafe extern "C" fn(*mut c_void) -> *const c_char,
    run_buffer: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
}

/// libnftables, loaded once per process (or found missing once): loading is a
/// `dlopen` that stays valid for the life of the process, set once and then
/// only read.
static LIBRARY: OnceLock<Option<Library>> = OnceLock::new();

/// The context kept from the last call; its lock makes calls take turns.
///
/// Process-wide on purpose, like the netlink socket's (see
/// `nft_netlink::KEPT`): the callers pass a namespace, not a handle, and the
/// point is that every change in the process reuses one context (a context
/// holds a netfilter socket whose close costs a grace period). A context is
/// not safe to use from two threads, and the lock is what serialises it;
/// [`super::settle`] reads it at exit.
static KEPT: Mutex<Option<Kept<Ctx>>> = Mutex::new(None);

/// A libnftables context.
struct Ctx(*mut c_void);

// SAFETY: a context is only touched with KEPT locked, by one thread at a time.
unsafe impl Send for Ctx {}
// SAFETY: as above: shared only while KEPT is locked, used by one thread.
unsafe impl Sync for Ctx {}

/// `WEFT_NFT_EXEC=1` makes plumb run the `nft` binary even when the library
/// is there, and skip nfnetlink element changes (see [`exec_forced`]).
pub const EXEC_ENV: &str = "WEFT_NFT_EXEC";

/// True when `WEFT_NFT_EXEC=1` asks for the `nft` binary: tests use it to
/// run the text path.
pub fn exec_forced() -> bool {
    std::env::var_os(EXEC_ENV).is_some_and(|v| v == "1")
}

fn library() -> Option<&'static Library> {
    LIBRARY
        .get_or_init(|| {
            if exec_forced() {
                return None;
            }
            load()
        })
        .as_ref()
}

fn load() -> Option<Library> {
    // SAFETY: dlopen takes a NUL-terminated name; the handle is never closed,
    // so symbols taken from it stay valid for the life of the process.
    let handle = unsafe {
        libc::dlopen(
            c"libnftables.so.1".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        )
    };
    if handle.is_null() {
        tracing::debug!("libnftables.so.1 not found: running the nft binary");
        return None;
    }
    let symbol = |name: &CStr| {
        // SAFETY: a valid handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let ctx_new = symbol(c"nft_ctx_new")?;
    let ctx_free = symbol(c"nft_ctx_free")?;
    let buffer_output = symbol(c"nft_ctx_buffer_output")?;
    let buffer_error = symbol(c"nft_ctx_buffer_error")?;
    let error_buffer = symbol(c"nft_ctx_get_error_buffer")?;
    let output_buffer = symbol(c"nft_ctx_get_output_buffer")?;
    let run_buffer = symbol(c"nft_run_cmd_from_buffer")?;
    // SAFETY: each pointer is the named function of libnftables.so.1, whose C
    // signatures (libnftables(3)) these function pointer types match:
    // struct nft_ctx *nft_ctx_new(uint32_t flags); void nft_ctx_free(struct nft_ctx *);
    // int nft_ctx_buffer_output(struct nft_ctx *); int nft_ctx_buffer_error(struct nft_ctx *);
    // const char *nft_ctx_get_error_buffer(struct nft_ctx *);
    // const char *nft_ctx_get_output_buffer(struct nft_ctx *);
    // int nft_run_cmd_from_buffer(struct nft_ctx *, const char *buf).
    unsafe {
        Some(Library {
            ctx_new: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(u32) -> *mut c_void>(
                ctx_new,
            ),
            ctx_free: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_void)>(
                ctx_free,
            ),
            buffer_output: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void) -> c_int,
            >(buffer_output),
            buffer_error: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void) -> c_int,
            >(buffer_error),
            error_buffer: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void) -> *const c_char,
            >(error_buffer),
            output_buffer: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void) -> *const c_char,
            >(output_buffer),
            run_buffer: std::mem::transmute::<
                *mut c_void,
                unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
            >(run_buffer),
        })
    }
}

/// Runs `input` (what `nft -f -` would read) as one transaction inside
/// `netns`. `None` when libnftables is not available; otherwise whether nft
/// accepted it, with nft's error text when it did not.
pub fn run(netns: &Netns, input: &str) -> Option<Result<std::result::Result<(), String>>> {
    let lib = library()?;
    let Ok(text) = CString::new(input) else {
        return Some(Ok(Err("the batch holds a NUL byte".to_string())));
    };
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    // Another namespace's context is freed (closed) here, not after its commit.
    let holder = match kept.take().filter(|k| k.is_for(netns)) {
        Some(k) => k,
        None => {
            let made = netns.run(|| {
                // SAFETY: nft_ctx_new(NFT_CTX_DEFAULT) has no preconditions;
                // the buffering calls take the new, non-null context.
                unsafe {
                    let ctx = (lib.ctx_new)(0);
                    if !ctx.is_null() {
                        (lib.buffer_output)(ctx);
                        (lib.buffer_error)(ctx);
                    }
                    Ctx(ctx)
                }
            });
            match made {
                Ok(ctx) if !ctx.0.is_null() => match Kept::new(netns, ctx) {
                    Ok(k) => k,
                    Err(e) => return Some(Err(e)),
                },
                Ok(_) => {
                    return Some(Ok(
                        Err("libnftables could not create a context".to_string()),
                    ))
                }
                Err(e) => return Some(Err(e)),
            }
        }
    };
    let ctx = &holder.value;
    let outcome = netns.run(|| {
        // SAFETY: the context is used by this thread alone (KEPT is locked);
        // `text` is NUL-terminated and outlives the call; the buffers belong
        // to the context and are copied out (and so emptied) before returning.
        unsafe {
            let rc = (lib.run_buffer)(ctx.0, text.as_ptr());
            let err = (lib.error_buffer)(ctx.0);
            let _ = (lib.output_buffer)(ctx.0);
            if rc == 0 {
                Ok(())
            } else {
                Err(if err.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(err).to_string_lossy().into_owned()
                })
            }
        }
    });
    *kept = Some(holder);
    Some(outcome)
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if let Some(Some(lib)) = LIBRARY.get() {
            if !self.0.is_null() {
                // SAFETY: a context of this library that nobody uses any more.
                unsafe { (lib.ctx_free)(self.0) };
            }
        }
    }
}

/// Whether a context is kept, i.e. a transaction may have been made.
pub(crate) fn in_use() -> bool {
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}
