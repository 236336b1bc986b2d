//! Device identifiers.
//!
//! A device id is the subject CN of its certificate, its MQTT client id and a level in its
//! topics, so it must be safe in all three: no `/`, no wildcards, no `$`, no spaces.

/// Longest device id accepted.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// Checks that `id` is a usable device id: 1 to 128 characters from `A-Z a-z 0-9 . _ : -`,
/// not starting with `.` or `-`.
pub fn validate_device_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("empty");
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err("longer than 128 characters");
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Err("must not start with '.' or '-'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return Err("only letters, digits and . _ : - are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_device_id("bms-gw-0001").is_ok());
        assert!(validate_device_id("SN:12.34_x").is_ok());
        for bad in ["", "a/b", "a+b", "#", "$SYS", "a b", "-x", ".x", "é"] {
            assert!(validate_device_id(bad).is_err(), "{bad}");
        }
        assert!(validate_device_id(&"a".repeat(129)).is_err());
    }
}
