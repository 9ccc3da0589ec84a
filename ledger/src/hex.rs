//! Lowercase hex, as the ledger's files and outputs write bytes.

pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex digits, with or without a `0x` prefix; `None` for anything else.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.strip_prefix("0x").unwrap_or(text);
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(super::decode("0x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(super::encode(&[0, 255, 16]), "00ff10");
        for bad in ["0x0", "zz", "0x 1", "+1", "0xg0"] {
            assert_eq!(super::decode(bad), None, "{bad}");
        }
    }
}
