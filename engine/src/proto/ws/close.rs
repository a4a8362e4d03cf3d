//! Close codes (RFC 6455 section 7.4) used by corecast.

/// A close status code.
pub type CloseCode = u16;

/// 1000: normal closure.
pub const NORMAL: CloseCode = 1000;
/// 1001: the server is going away (shutdown).
pub const GOING_AWAY: CloseCode = 1001;
/// 1002: protocol error.
pub const PROTOCOL_ERROR: CloseCode = 1002;
/// 1003: a data type the endpoint cannot accept.
pub const UNSUPPORTED_DATA: CloseCode = 1003;
/// 1007: payload not consistent with the message type (invalid UTF-8, bad deflate data).
pub const INVALID_PAYLOAD: CloseCode = 1007;
/// 1008: policy violation (slow consumer, rate limit).
pub const POLICY_VIOLATION: CloseCode = 1008;
/// 1009: message too big.
pub const MESSAGE_TOO_BIG: CloseCode = 1009;
/// 1011: unexpected server condition.
pub const INTERNAL_ERROR: CloseCode = 1011;
/// 1013: try again later (overload).
pub const TRY_AGAIN_LATER: CloseCode = 1013;

/// Whether a peer may put `code` in a close frame it sends. 1005, 1006 and 1015 are
/// reserved for reporting and never sent; other codes under 3000 are IANA-registered
/// and only the assigned ones are valid; 3000..=4999 are for libraries and applications.
pub fn is_valid_received(code: CloseCode) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_unassigned_codes_are_invalid() {
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_received(bad), "{bad}");
        }
        for good in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999,
        ] {
            assert!(is_valid_received(good), "{good}");
        }
    }
}
