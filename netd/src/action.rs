//! [`Action`]: one change netd made to the kernel or its state, as reports,
//! logs and metrics count it.

use serde::{Deserialize, Serialize};

/// One change reconciliation (or host setup) made, for logs, reports and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// A stable label for metrics: "bridge_created", "repaired", …
    pub kind: String,
    /// What was done, in words.
    pub detail: String,
}

impl Action {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Action {
        Action {
            kind: kind.to_string(),
            detail: detail.into(),
        }
    }
}
