//! Authenticated QUIC Retry (address-validation) tokens, sans-IO.
//!
//! A server that sends a Retry packet hands the client a token; the client echoes it
//! in its next Initial. The token must prove that the client can receive at its
//! claimed address and must carry the original destination connection ID (`odcid`)
//! and the Retry's source connection ID, which the server later puts in its
//! `original_destination_connection_id` and `retry_source_connection_id` transport
//! parameters (RFC 9000 §8.1.2, §7.3). Nothing here reads a clock: callers pass
//! `now`. Only [`RetryTokens::new`] touches the OS, for randomness.
//!
//! # Token format (version 0x01)
//!
//! ```text
//! offset  size      field
//! 0       1         version = 0x01
//! 1       8         expiry, unix time in milliseconds, u64 big-endian
//! 9       1         odcid length L1 (0..=20)
//! 10      L1        odcid
//! 10+L1   1         retry scid length L2 (0..=20)
//! 11+L1   L2        retry scid
//! 11+L1+L2 32       HMAC-SHA256 tag
//! ```
//!
//! The tag covers every byte before it followed by the client's address, which is
//! bound into the tag but not stored: one byte `4` or `6`, the IP octets (4 or 16;
//! an IPv4-mapped IPv6 address counts as its IPv4 form, so dual-stack sockets agree
//! with IPv4 ones), then the UDP port as u16 big-endian. A token is therefore 43 to
//! 83 bytes ([`MAX_TOKEN_LEN`]).
//!
//! Validation checks the structure first ([`TokenError::Malformed`]), then the tag
//! in constant time ([`TokenError::BadMac`]), and only then the expiry
//! ([`TokenError::Expired`]), so an unauthenticated expiry is never acted on.
//!
//! These are Retry tokens only. Tokens sent in `NEW_TOKEN` frames would need a
//! different version byte (or key) so one kind cannot be replayed as the other.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Longest connection ID QUIC version 1 allows (RFC 9000 §17.2).
pub const MAX_CID_LEN: usize = 20;

/// Longest token [`RetryTokens::mint`] produces (both connection IDs at 20 bytes).
pub const MAX_TOKEN_LEN: usize = HEADER_LEN + 2 * (1 + MAX_CID_LEN) + TAG_LEN;

const VERSION: u8 = 0x01;
/// Version byte plus expiry.
const HEADER_LEN: usize = 1 + 8;
const TAG_LEN: usize = 32;
/// Family byte, up to 16 address bytes, port.
const MAX_PEER_LEN: usize = 1 + 16 + 2;

/// Why a token was refused (or, for [`TokenError::Malformed`] from
/// [`RetryTokens::mint`], could not be made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Wrong length, unknown version, or a connection ID longer than 20 bytes.
    Malformed,
    /// The tag does not match: forged, corrupted, minted with another key, or sent
    /// from another address or port.
    BadMac,
    /// Authentic, but its lifetime has passed.
    Expired,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "retry token is malformed (bad length, version or CID length)",
            Self::BadMac => "retry token failed authentication (forged or from another address)",
            Self::Expired => "retry token has expired",
        })
    }
}

impl std::error::Error for TokenError {}

/// The system random number generator failed while making a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngError;

impl fmt::Display for RngError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("system random number generator failed to produce a retry token key")
    }
}

impl std::error::Error for RngError {}

/// Mints and validates Retry tokens with one HMAC-SHA256 key.
pub struct RetryTokens {
    key: hmac::Key,
    lifetime: Duration,
}

// Hand-written so the key can never be printed.
impl fmt::Debug for RetryTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryTokens")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// The parts of a structurally valid token, borrowed from it.
struct Parsed<'a> {
    signed: &'a [u8],
    tag: &'a [u8],
    expiry_ms: u64,
    odcid: &'a [u8],
    retry_scid: &'a [u8],
}

impl RetryTokens {
    /// A random 32-byte key from the system RNG; tokens live `lifetime`.
    ///
    /// Each process (or shard) that calls this gets its own key, so a token is only
    /// accepted by the instance that minted it; share one key via
    /// [`RetryTokens::with_key`] when packets may land elsewhere.
    ///
    /// # Errors
    ///
    /// [`RngError`] if the system RNG fails.
    pub fn new(lifetime: Duration) -> Result<Self, RngError> {
        let mut key = [0u8; 32];
        SystemRandom::new().fill(&mut key).map_err(|_| RngError)?;
        Ok(Self::with_key(&key, lifetime))
    }

    /// Tokens authenticated with `key`; they live `lifetime` (zero makes every token
    /// already expired).
    #[must_use]
    pub fn with_key(key: &[u8; 32], lifetime: Duration) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            lifetime,
        }
    }

    /// Token for a client at `peer` whose first Initial had destination CID `odcid`,
    /// answered by a Retry with our source CID `retry_scid`. Expires at
    /// `now + lifetime`.
    ///
    /// # Errors
    ///
    /// [`TokenError::Malformed`] if either CID is longer than [`MAX_CID_LEN`]
    /// (QUIC v1 servers drop such packets before getting here).
    pub fn mint(
        &self,
        peer: SocketAddr,
        odcid: &[u8],
        retry_scid: &[u8],
        now: SystemTime,
    ) -> Result<Vec<u8>, TokenError> {
        let odcid_len = cid_len(odcid)?;
        let scid_len = cid_len(retry_scid)?;
        let expiry_ms = now.checked_add(self.lifetime).map_or(u64::MAX, unix_ms);

        let mut token = Vec::with_capacity(MAX_TOKEN_LEN + MAX_PEER_LEN);
        token.push(VERSION);
        token.extend_from_slice(&expiry_ms.to_be_bytes());
        token.push(odcid_len);
        token.extend_from_slice(odcid);
        token.push(scid_len);
        token.extend_from_slice(retry_scid);

        // Sign body || peer, then swap the peer bytes for the tag.
        let body_len = token.len();
        push_peer(&mut token, peer);
        let tag = hmac::sign(&self.key, &token);
        token.truncate(body_len);
        token.extend_from_slice(tag.as_ref());
        Ok(token)
    }

    /// Check a token from a client at `peer`; on success returns
    /// `(odcid, retry_scid)`. Never panics, whatever the bytes.
    ///
    /// # Errors
    ///
    /// [`TokenError::Malformed`] for a bad layout, [`TokenError::BadMac`] if the tag
    /// does not match this key and `peer`, [`TokenError::Expired`] once `now` reaches
    /// the expiry.
    pub fn validate(
        &self,
        token: &[u8],
        peer: SocketAddr,
        now: SystemTime,
    ) -> Result<(Vec<u8>, Vec<u8>), TokenError> {
        let parsed = parse(token).ok_or(TokenError::Malformed)?;

        let mut input = Vec::with_capacity(parsed.signed.len() + MAX_PEER_LEN);
        input.extend_from_slice(parsed.signed);
        push_peer(&mut input, peer);
        hmac::verify(&self.key, &input, parsed.tag).map_err(|_| TokenError::BadMac)?;

        if unix_ms(now) >= parsed.expiry_ms {
            return Err(TokenError::Expired);
        }
        Ok((parsed.odcid.to_vec(), parsed.retry_scid.to_vec()))
    }
}

fn cid_len(cid: &[u8]) -> Result<u8, TokenError> {
    if cid.len() > MAX_CID_LEN {
        return Err(TokenError::Malformed);
    }
    u8::try_from(cid.len()).map_err(|_| TokenError::Malformed)
}

/// Milliseconds since the Unix epoch, clamped to `0..=u64::MAX`.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The address bytes the tag binds. Canonical form, so `::ffff:a.b.c.d` and
/// `a.b.c.d` are the same client.
fn push_peer(buf: &mut Vec<u8>, peer: SocketAddr) {
    match peer.ip().to_canonical() {
        IpAddr::V4(ip) => {
            buf.push(4);
            buf.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.push(6);
            buf.extend_from_slice(&ip.octets());
        }
    }
    buf.extend_from_slice(&peer.port().to_be_bytes());
}

/// Split a token into its fields, or `None` if the layout is wrong in any way
/// (including trailing bytes). Only `get`/`split_first`: no indexing that can panic.
fn parse(token: &[u8]) -> Option<Parsed<'_>> {
    let signed_len = token.len().checked_sub(TAG_LEN)?;
    let signed = token.get(..signed_len)?;
    let tag = token.get(signed_len..)?;

    let (&version, rest) = signed.split_first()?;
    if version != VERSION {
        return None;
    }
    let expiry: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    let rest = rest.get(8..)?;
    let (odcid, rest) = split_cid(rest)?;
    let (retry_scid, rest) = split_cid(rest)?;
    if !rest.is_empty() {
        return None;
    }
    Some(Parsed {
        signed,
        tag,
        expiry_ms: u64::from_be_bytes(expiry),
        odcid,
        retry_scid,
    })
}

/// A length byte (at most [`MAX_CID_LEN`]) and that many bytes.
fn split_cid(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = buf.split_first()?;
    let len = usize::from(len);
    if len > MAX_CID_LEN {
        return None;
    }
    Some((rest.get(..len)?, rest.get(len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    const LIFETIME: Duration = Duration::from_secs(10);
    const KEY: [u8; 32] = [7; 32];

    fn tokens() -> RetryTokens {
        RetryTokens::with_key(&KEY, LIFETIME)
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_750_000_000_123)
    }

    fn peer() -> SocketAddr {
        "192.0.2.7:4433".parse().unwrap()
    }

    fn odcid() -> Vec<u8> {
        (1..=8).collect()
    }

    fn scid() -> Vec<u8> {
        (100..116).collect()
    }

    fn sample() -> Vec<u8> {
        tokens().mint(peer(), &odcid(), &scid(), now()).unwrap()
    }

    #[test]
    fn round_trip() {
        let token = sample();
        assert_eq!(token.len(), HEADER_LEN + 1 + 8 + 1 + 16 + TAG_LEN);
        let (o, s) = tokens().validate(&token, peer(), now()).unwrap();
        assert_eq!(o, odcid());
        assert_eq!(s, scid());
    }

    #[test]
    fn layout_matches_module_doc() {
        let token = sample();
        assert_eq!(token[0], 0x01);
        let expiry = u64::from_be_bytes(token[1..9].try_into().unwrap());
        assert_eq!(expiry, 1_750_000_010_123);
        assert_eq!(token[9], 8);
        assert_eq!(&token[10..18], &odcid()[..]);
        assert_eq!(token[18], 16);
        assert_eq!(&token[19..35], &scid()[..]);
        let mut signed = token[..35].to_vec();
        signed.extend_from_slice(&[4, 192, 0, 2, 7, 0x11, 0x51]);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &KEY);
        assert_eq!(&token[35..], hmac::sign(&key, &signed).as_ref());
    }

    #[test]
    fn round_trip_ipv6() {
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let token = tokens().mint(v6, &odcid(), &scid(), now()).unwrap();
        assert!(tokens().validate(&token, v6, now()).is_ok());
        let other: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
        assert_eq!(
            tokens().validate(&token, other, now()),
            Err(TokenError::BadMac)
        );
    }

    #[test]
    fn ipv4_mapped_peer_is_the_same_client() {
        let mapped = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()),
            4433,
        );
        let token = tokens().mint(mapped, &odcid(), &scid(), now()).unwrap();
        assert!(tokens().validate(&token, peer(), now()).is_ok());
        assert!(tokens().validate(&sample(), mapped, now()).is_ok());
    }

    #[test]
    fn cid_lengths_0_and_20() {
        let max = [0xabu8; MAX_CID_LEN];
        for (o, s) in [
            (&[][..], &[][..]),
            (&max[..], &max[..]),
            (&[][..], &max[..]),
            (&max[..], &[][..]),
        ] {
            let token = tokens().mint(peer(), o, s, now()).unwrap();
            assert!(token.len() <= MAX_TOKEN_LEN);
            let (vo, vs) = tokens().validate(&token, peer(), now()).unwrap();
            assert_eq!((vo.as_slice(), vs.as_slice()), (o, s));
        }
        let longest = tokens().mint(peer(), &max, &max, now()).unwrap();
        assert_eq!(longest.len(), MAX_TOKEN_LEN);
    }

    #[test]
    fn cid_over_20_bytes_refused_by_mint() {
        let long = [1u8; MAX_CID_LEN + 1];
        let t = tokens();
        assert_eq!(
            t.mint(peer(), &long, &scid(), now()),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            t.mint(peer(), &odcid(), &long, now()),
            Err(TokenError::Malformed)
        );
        let huge = vec![0u8; 300];
        assert_eq!(
            t.mint(peer(), &huge, &scid(), now()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn other_peer_ip_is_bad_mac() {
        let other: SocketAddr = "192.0.2.8:4433".parse().unwrap();
        assert_eq!(
            tokens().validate(&sample(), other, now()),
            Err(TokenError::BadMac)
        );
    }

    #[test]
    fn other_port_is_bad_mac() {
        let other = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 4434));
        assert_eq!(
            tokens().validate(&sample(), other, now()),
            Err(TokenError::BadMac)
        );
    }

    #[test]
    fn flipped_byte_anywhere_is_refused() {
        let token = sample();
        for i in 0..token.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut bad = token.clone();
                bad[i] ^= mask;
                let err = tokens().validate(&bad, peer(), now()).unwrap_err();
                assert!(
                    matches!(err, TokenError::BadMac | TokenError::Malformed),
                    "byte {i} mask {mask:#x}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_malformed() {
        let token = sample();
        for len in 0..token.len() {
            assert_eq!(
                tokens().validate(&token[..len], peer(), now()),
                Err(TokenError::Malformed),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut token = sample();
        token.push(0);
        assert_eq!(
            tokens().validate(&token, peer(), now()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn empty_token_is_malformed() {
        assert_eq!(
            tokens().validate(&[], peer(), now()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn unknown_version_is_malformed() {
        let mut token = sample();
        token[0] = 0x02;
        assert_eq!(
            tokens().validate(&token, peer(), now()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn expires_after_lifetime() {
        let token = sample();
        let t = tokens();
        let last_ok = now() + LIFETIME - Duration::from_millis(1);
        assert!(t.validate(&token, peer(), last_ok).is_ok());
        assert_eq!(
            t.validate(&token, peer(), now() + LIFETIME),
            Err(TokenError::Expired)
        );
        let much_later = now() + Duration::from_secs(3600);
        assert_eq!(
            t.validate(&token, peer(), much_later),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn zero_lifetime_tokens_are_already_expired() {
        let t = RetryTokens::with_key(&KEY, Duration::ZERO);
        let token = t.mint(peer(), &odcid(), &scid(), now()).unwrap();
        assert_eq!(t.validate(&token, peer(), now()), Err(TokenError::Expired));
    }

    #[test]
    fn mac_is_checked_before_expiry() {
        let other: SocketAddr = "192.0.2.8:4433".parse().unwrap();
        let later = now() + Duration::from_secs(3600);
        assert_eq!(
            tokens().validate(&sample(), other, later),
            Err(TokenError::BadMac)
        );
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let t = RetryTokens::with_key(&KEY, Duration::MAX);
        let far = UNIX_EPOCH + Duration::from_secs(1_000_000_000_000_000);
        for when in [UNIX_EPOCH, now(), far] {
            let token = t.mint(peer(), &odcid(), &scid(), when).unwrap();
            assert!(t.validate(&token, peer(), when).is_ok());
        }
        let before_epoch = UNIX_EPOCH - Duration::from_secs(10);
        let token = tokens().mint(peer(), &[], &[], before_epoch).unwrap();
        // Expiry clamps to the epoch, so the token is already expired.
        assert_eq!(
            tokens().validate(&token, peer(), before_epoch),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn token_from_another_key_is_bad_mac() {
        let other = RetryTokens::with_key(&[8; 32], LIFETIME);
        let token = other.mint(peer(), &odcid(), &scid(), now()).unwrap();
        assert_eq!(
            tokens().validate(&token, peer(), now()),
            Err(TokenError::BadMac)
        );
    }

    #[test]
    fn new_makes_distinct_random_keys() {
        let a = RetryTokens::new(LIFETIME).unwrap();
        let b = RetryTokens::new(LIFETIME).unwrap();
        let token = a.mint(peer(), &odcid(), &scid(), now()).unwrap();
        assert!(a.validate(&token, peer(), now()).is_ok());
        assert_eq!(b.validate(&token, peer(), now()), Err(TokenError::BadMac));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // xorshift: deterministic junk of every length up to past the maximum.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let t = tokens();
        for len in 0..=MAX_TOKEN_LEN + 8 {
            for _ in 0..64 {
                let junk: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                assert!(t.validate(&junk, peer(), now()).is_err());
                // Also with a plausible header, so parsing reaches the CID fields.
                let mut framed = junk.clone();
                if let Some(first) = framed.first_mut() {
                    *first = VERSION;
                }
                assert!(t.validate(&framed, peer(), now()).is_err());
            }
        }
    }

    #[test]
    fn errors_display_and_debug_hide_key() {
        assert!(TokenError::Malformed.to_string().contains("malformed"));
        assert!(TokenError::BadMac.to_string().contains("authentication"));
        assert!(TokenError::Expired.to_string().contains("expired"));
        assert!(RngError.to_string().contains("random"));
        let dbg = format!("{:?}", tokens());
        assert!(dbg.contains("lifetime") && !dbg.contains("key"), "{dbg}");
    }
}
