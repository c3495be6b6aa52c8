//! `netd names`: what the network's DNS server answers.

use super::{print_json, ClientArgs};
use crate::api::NameRow;
use crate::error::Result;

pub async fn run(args: ClientArgs) -> Result<()> {
    let rows: Vec<NameRow> = args.client().get("/v1/names").await?;
    if args.json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no names: attach containers with --name or --alias");
        return Ok(());
    }
    println!(
        "{:<32}  {:<15}  {:<39}  {:<20}  {:<7}  CONTAINER",
        "NAME", "IPV4", "IPV6", "HOST", "SOURCE"
    );
    for row in &rows {
        let show = |a: Option<String>| a.unwrap_or_else(|| "-".into());
        let name = if row.alias {
            format!("{} (alias)", row.name)
        } else {
            row.name.clone()
        };
        println!(
            "{:<32}  {:<15}  {:<39}  {:<20}  {:<7}  {}",
            name,
            show(row.ipv4.map(|a| a.to_string())),
            show(row.ipv6.map(|a| a.to_string())),
            row.host,
            serde_json::to_value(row.source)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            row.container
        );
    }
    Ok(())
}
