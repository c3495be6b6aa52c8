//! `netd reconcile`

use super::{print_json, ClientArgs};
use crate::endpoints::ReconcileReport;
use crate::error::Result;

pub async fn run(args: ClientArgs) -> Result<()> {
    let report: ReconcileReport = args.client().post("/v1/reconcile", &()).await?;
    if args.json {
        print_json(&report);
        return Ok(());
    }
    if report.actions.is_empty() && report.errors.is_empty() {
        println!("nothing to do: the kernel matches the state");
    }
    for action in &report.actions {
        println!("{}", action.detail);
    }
    for error in &report.errors {
        println!("error: {error}");
    }
    Ok(())
}
