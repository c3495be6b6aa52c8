//! `netd run`

use crate::config::{Config, ConfigArgs};
use crate::error::Result;

pub async fn run(args: ConfigArgs) -> Result<()> {
    let config = Config::load(&args)?;
    crate::daemon::run(config).await
}
