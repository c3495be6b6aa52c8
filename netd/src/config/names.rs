//! The names keys' checks (`dns_search_domain`, `dns_rate_limit`).

use super::ConfigError;

pub(super) fn validate(search_domain: &str, rate_limit: u32) -> Result<(), ConfigError> {
    if let Err(e) = crate::names::Zone::new(search_domain, vec![]) {
        return Err(ConfigError::Value {
            key: "dns_search_domain",
            value: search_domain.to_string(),
            why: e.to_string(),
        });
    }
    if rate_limit == 0 {
        return Err(ConfigError::Value {
            key: "dns_rate_limit",
            value: "0".into(),
            why: "must be at least 1 query per second".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_search_domain_or_a_zero_rate_is_refused() {
        assert!(validate("weft.internal", 5000).is_ok());
        let e = validate("in-addr.arpa", 5000).unwrap_err().to_string();
        assert!(e.contains("dns_search_domain"), "{e}");
        let e = validate("weft.internal", 0).unwrap_err().to_string();
        assert!(e.contains("dns_rate_limit"), "{e}");
    }
}
