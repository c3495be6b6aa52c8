//! `dig` from a test namespace, its status line and answer section read back.

use std::time::Duration;

use plumb::Netns;
use world::run_in;

/// What dig saw: the status and the answer records' data.
#[derive(Debug)]
pub struct Dig {
    pub status: String,
    pub answers: Vec<String>,
}

/// Runs `program args` in `netns` (dig, or `ip netns exec … dig`), one try
/// of `time` seconds, and reads dig's status line and answer section.
pub fn dig_with(netns: &Netns, program: &str, args: &[&str], time: u32) -> Dig {
    let time = format!("+time={time}");
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["+tries=1", &time, "+noall", "+comments", "+answer"]);
    let out = run_in(netns, program, &full, Duration::from_secs(20)).unwrap();
    let status = out
        .stdout
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_string();
    let answers = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    Dig { status, answers }
}
