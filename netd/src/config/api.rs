//! The `[api]` section of netd.toml, its `WEFT_API_*` variables and `--api-*`
//! flags: the limits that keep a slow, broken or hostile client of the unix
//! socket from holding netd's memory or connections.
//!
//! ```toml
//! [api]
//! max_body_bytes = 1048576     # larger bodies: 413
//! header_timeout_ms = 10000    # request headers not complete by then: closed
//! body_timeout_ms = 10000      # body not complete by then: 408, closed
//! max_connections = 256        # beyond it, new connections get 503 and are closed
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The largest request body by default: attach requests are a few hundred bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// How long a client has for its headers, and for its body, by default.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 10_000;
/// Open connections served at once by default; each CNI call holds one.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// `[api]` as written in netd.toml; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFile {
    pub max_body_bytes: Option<usize>,
    pub header_timeout_ms: Option<u64>,
    pub body_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
}

/// The same keys as flags, each also read from its `WEFT_API_*` variable.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ApiArgs {
    /// Largest API request body in bytes; larger ones get 413.
    #[arg(long, env = "WEFT_API_MAX_BODY_BYTES")]
    pub api_max_body_bytes: Option<usize>,
    /// Milliseconds a client has to send its request headers.
    #[arg(long, env = "WEFT_API_HEADER_TIMEOUT_MS")]
    pub api_header_timeout_ms: Option<u64>,
    /// Milliseconds a client has to send its request body; then 408.
    #[arg(long, env = "WEFT_API_BODY_TIMEOUT_MS")]
    pub api_body_timeout_ms: Option<u64>,
    /// API connections open at once; beyond it new ones get 503 and are closed.
    #[arg(long, env = "WEFT_API_MAX_CONNECTIONS")]
    pub api_max_connections: Option<usize>,
}

/// The resolved limits of the API.
#[derive(Debug, Clone, Serialize)]
pub struct ApiLimits {
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ApiLimits {
    fn default() -> ApiLimits {
        ApiLimits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_timeout: Duration::from_millis(DEFAULT_READ_TIMEOUT_MS),
            body_timeout: Duration::from_millis(DEFAULT_READ_TIMEOUT_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ApiLimits {
    /// Flags over the file over the defaults.
    pub(super) fn merge(file: Option<ApiFile>, args: &ApiArgs) -> ApiLimits {
        let file = file.unwrap_or_default();
        let d = ApiLimits::default();
        let ms = |flag: Option<u64>, key: Option<u64>, default: Duration| {
            flag.or(key).map(Duration::from_millis).unwrap_or(default)
        };
        ApiLimits {
            max_body_bytes: args
                .api_max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(d.max_body_bytes),
            header_timeout: ms(
                args.api_header_timeout_ms,
                file.header_timeout_ms,
                d.header_timeout,
            ),
            body_timeout: ms(
                args.api_body_timeout_ms,
                file.body_timeout_ms,
                d.body_timeout,
            ),
            max_connections: args
                .api_max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
        }
    }

    /// Zero would refuse every request or connection.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let zero = |key: &'static str| ConfigError::Value {
            key,
            value: "0".into(),
            why: "must be at least 1".into(),
        };
        if self.max_body_bytes == 0 {
            return Err(zero("api.max_body_bytes"));
        }
        if self.header_timeout.is_zero() {
            return Err(zero("api.header_timeout_ms"));
        }
        if self.body_timeout.is_zero() {
            return Err(zero("api.body_timeout_ms"));
        }
        if self.max_connections == 0 {
            return Err(zero("api.max_connections"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_zero_is_refused() {
        let file = ApiFile {
            max_body_bytes: Some(10),
            max_connections: Some(3),
            ..Default::default()
        };
        let args = ApiArgs {
            api_max_connections: Some(5),
            ..Default::default()
        };
        let limits = ApiLimits::merge(Some(file), &args);
        assert_eq!(limits.max_body_bytes, 10);
        assert_eq!(limits.max_connections, 5);
        assert_eq!(
            limits.body_timeout,
            Duration::from_millis(DEFAULT_READ_TIMEOUT_MS)
        );
        assert!(limits.validate().is_ok());
        let zero = ApiLimits {
            max_connections: 0,
            ..limits
        };
        let err = zero.validate().unwrap_err().to_string();
        assert!(err.contains("api.max_connections"), "{err}");
    }
}
