//! A test-only knob: pauses at named steps of an attach, a detach's reaping,
//! or an attach that collided with a pending detach, so that tests can kill
//! netd half-way through or line two operations up against each other.
//!
//! `WEFT_DEBUG_PAUSE_ATTACH=reserved|veth|addressed` makes an attach sleep
//! 30 s after that step; `=reap` makes the reaper sleep before deleting what
//! detaches handed it; `=collided` makes an attach that collided with a
//! container sleep before it looks whether the reaper holds that container.
//! Several steps go comma-separated, each with its own seconds if given:
//! `reap:1,collided:2`.
//!
//! The variable is read once, when the network is opened; unset (always, in
//! production) each step costs one look at an empty list.

use std::time::Duration;

/// The variable tests set on the netd process they start.
pub const PAUSE_ENV: &str = "WEFT_DEBUG_PAUSE_ATTACH";

/// The steps to pause at, and for how long.
#[derive(Debug, Clone, Default)]
pub struct TestPauses {
    steps: Vec<(String, Duration)>,
}

impl TestPauses {
    /// Reads [`PAUSE_ENV`]; none when it is unset.
    pub fn from_env() -> TestPauses {
        match std::env::var(PAUSE_ENV) {
            Ok(asked) => TestPauses::parse(&asked),
            Err(_) => TestPauses::default(),
        }
    }

    fn parse(asked: &str) -> TestPauses {
        let steps = asked
            .split(',')
            .filter(|entry| !entry.is_empty())
            .map(|entry| match entry.split_once(':') {
                Some((step, secs)) => (step.to_string(), secs.parse().unwrap_or(30)),
                None => (entry.to_string(), 30),
            })
            .map(|(step, secs)| (step, Duration::from_secs(secs)))
            .collect();
        TestPauses { steps }
    }

    /// Sleeps when `step` was asked for.
    pub async fn at(&self, step: &str) {
        if let Some((_, pause)) = self.steps.iter().find(|(s, _)| s == step) {
            tracing::warn!(
                step,
                "{PAUSE_ENV} is set: pausing for {} s",
                pause.as_secs()
            );
            tokio::time::sleep(*pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_take_their_own_seconds_or_thirty() {
        let p = TestPauses::parse("reap:1,collided:2,veth");
        assert_eq!(
            p.steps,
            vec![
                ("reap".to_string(), Duration::from_secs(1)),
                ("collided".to_string(), Duration::from_secs(2)),
                ("veth".to_string(), Duration::from_secs(30)),
            ]
        );
        assert!(TestPauses::parse("").steps.is_empty());
    }
}
