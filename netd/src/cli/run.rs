//! `netd run`

use crate::config::ConfigArgs;
use crate::error::Result;

pub async fn run(args: ConfigArgs) -> Result<()> {
    crate::daemon::run_from(args).await
}
