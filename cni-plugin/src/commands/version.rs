//! VERSION: which spec versions weft speaks.

use serde_json::Value;

use crate::error::CniError;
use crate::version::version_info;

/// Echoes the `cniVersion` asked for (any string, even one weft does not
/// speak: the runtime is probing) with the list. Empty stdin is answered too.
pub fn run(stdin: &[u8]) -> Result<Value, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Ok(version_info(None));
    }
    let value: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::decoding("cannot decode VERSION input", e.to_string()))?;
    let asked = value.get("cniVersion").and_then(Value::as_str);
    Ok(version_info(asked))
}
