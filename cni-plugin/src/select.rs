//! The backend a config's `mode` selects: `standalone` (netd's library in
//! this process), `daemon` (netd's API), or `auto` — the daemon when its
//! socket answers, else standalone.

use crate::backend::Backend;
use crate::daemon::{answers, socket_of, Daemon};
use crate::error::CniError;
use crate::standalone::Standalone;
use crate::types::{Mode, NetConf};

pub fn backend_for(conf: &NetConf) -> Result<Box<dyn Backend>, CniError> {
    let daemon = match conf.mode {
        Mode::Standalone => false,
        Mode::Daemon => true,
        Mode::Auto => answers(&socket_of(conf)),
    };
    if daemon {
        Ok(Box::new(Daemon::new(conf)?))
    } else {
        Ok(Box::new(Standalone::new()?))
    }
}
