//! `netd pubkey`: this host's overlay public key, read from the private key
//! file (`overlay.private_key_file`, default `<state_dir>/overlay.key`),
//! which is generated with mode 0600 when missing. Needs no running netd.

use crate::config::{Config, ConfigArgs};
use crate::error::Result;

pub fn run(args: ConfigArgs) -> Result<()> {
    let config = Config::load(&args)?;
    let key = crate::overlay::load_or_generate_key(&config.overlay_key_file())?;
    println!("{}", key.public_key());
    Ok(())
}
