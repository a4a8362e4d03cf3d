//! permessage-deflate (RFC 7692), sans-IO.
//!
//! Three pieces: [`negotiate`] picks parameters from the client's
//! `Sec-WebSocket-Extensions` offers, [`Inflater`] decompresses messages a
//! client sent with RSV1 set, and [`Deflater`] compresses outgoing messages.
//!
//! The server always uses `server_no_context_takeover`: a broadcast is
//! compressed once and the same frame is shared by every subscriber, so each
//! message must decompress on its own, whatever the receiver saw before.
//!
//! zlib cannot produce raw deflate with an 8-bit (256-byte) window, only 9 to
//! 15 bits. On the inflate side that is harmless: a window of 8 bits is
//! inflated with 9, and a larger window decodes any stream written with a
//! smaller one. On the deflate side the server would overstep the client's
//! limit, so an offer with `server_max_window_bits=8` is declined and a
//! configured server window of 8 is treated as 9.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Smallest window zlib accepts for raw deflate (8 is rejected, see module docs).
const MIN_ZLIB_WINDOW_BITS: u8 = 9;
/// Smallest window RFC 7692 lets a peer ask for.
const MIN_WINDOW_BITS: u8 = 8;
/// Largest window, and the default when a side names none.
const MAX_WINDOW_BITS: u8 = 15;

/// The empty stored block a sync flush ends with; RFC 7692 strips it from
/// every message and the receiver appends it back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib level 1 (static Huffman codes, no lazy matching): compression runs on
/// the shard's thread for every broadcast, so speed matters more than ratio.
/// Level 3 makes 2-100 KiB JSON-like text about 30% smaller at 2-2.5 times
/// the CPU time (zlib-rs, release build).
const LEVEL: u32 = 1;

/// Output step bounds for inflating. Steps start near the expected size, so a
/// small message does not zero a large buffer, and double up to the maximum.
const MIN_CHUNK: usize = 256;
const MAX_CHUNK: usize = 64 * 1024;

/// Server-side settings from config.
#[derive(Clone, Debug)]
pub struct DeflateSettings {
    /// Whether permessage-deflate is offered to clients at all.
    pub enabled: bool,
    /// Largest LZ77 window (log2 bytes, 8..=15) the server compresses with.
    /// 8 is used as 9 (zlib's minimum for raw deflate); out-of-range values
    /// are clamped.
    pub server_max_window_bits: u8,
    /// Largest LZ77 window (log2 bytes, 8..=15) the server lets a client
    /// compress with, when the client offers to accept a limit. This saves
    /// client memory only: zlib-rs inflates with a 32 KiB window whatever the
    /// value. Out-of-range values are clamped.
    pub client_max_window_bits: u8,
}

impl Default for DeflateSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
        }
    }
}

/// Parameters agreed with one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The server compresses every message independently ([`negotiate`]
    /// always sets this).
    pub server_no_context_takeover: bool,
    /// The client compresses every message independently, so the [`Inflater`]
    /// can free its state between messages.
    pub client_no_context_takeover: bool,
    /// Largest window (9..=15) the server may compress with for this client. A
    /// frame from a [`Deflater`] made with `window_bits` may be sent to this
    /// client only if `window_bits <= server_max_window_bits`.
    pub server_max_window_bits: u8,
    /// Largest window (8..=15) the client may compress with; 15 unless the
    /// client offered to accept a limit.
    pub client_max_window_bits: u8,
}

impl Negotiated {
    /// The value for the response's Sec-WebSocket-Extensions header.
    ///
    /// Window sizes are only written when below 15, the default. That keeps
    /// `client_max_window_bits` out of the response when the client did not
    /// offer it (RFC 7692 7.1.2.2 forbids it then); [`negotiate`] only lowers
    /// it below 15 when offered.
    pub fn response_header(&self) -> String {
        let mut header = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            header.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            header.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < MAX_WINDOW_BITS {
            header.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if self.client_max_window_bits < MAX_WINDOW_BITS {
            header.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        header
    }
}

/// Error for a malformed extension offer (the handshake answers 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionError(pub &'static str);

impl fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ExtensionError {}

/// Look through every Sec-WebSocket-Extensions header value (each may hold
/// several comma-separated offers) and accept the FIRST permessage-deflate
/// offer whose parameters we can satisfy.
///
/// Unknown extensions are ignored. An offer with unknown, duplicate or invalid
/// parameters (window bits outside 8..=15 or with leading zeros, a value on
/// `*_no_context_takeover`, `server_max_window_bits` without a value) is
/// declined and the next one tried, as RFC 7692 5 requires; so is an offer
/// asking for `server_max_window_bits=8`, which zlib cannot honour. Every
/// header value is checked in full, so `Err` means some value does not follow
/// the RFC 6455 9.1 grammar at all. `Ok(None)` when compression is disabled
/// (headers are then not looked at) or no offer is acceptable.
///
/// Policy: `server_no_context_takeover` is always answered, see the module
/// docs. `client_no_context_takeover` is answered iff offered. Windows are the
/// smaller of the offer and the settings; `client_max_window_bits` offered
/// without a value gets the configured limit, and stays 15 (and absent from
/// the response) when not offered.
pub fn negotiate(
    header_values: &[&[u8]],
    settings: &DeflateSettings,
) -> Result<Option<Negotiated>, ExtensionError> {
    if !settings.enabled {
        return Ok(None);
    }
    let mut accepted = None;
    for value in header_values {
        parse_header_value(value, settings, &mut accepted)?;
    }
    Ok(accepted)
}

/// Parses one header value (`1#extension`, RFC 6455 9.1), storing the first
/// acceptable permessage-deflate offer in `accepted` if it is still empty.
fn parse_header_value(
    value: &[u8],
    settings: &DeflateSettings,
    accepted: &mut Option<Negotiated>,
) -> Result<(), ExtensionError> {
    let mut cur = Cursor { rest: value };
    loop {
        cur.skip_ows();
        // Empty list elements are allowed and ignored (RFC 7230 7).
        if cur.eat(b',') {
            continue;
        }
        if cur.rest.is_empty() {
            return Ok(());
        }
        let name = cur.token().ok_or(ExtensionError(
            "malformed Sec-WebSocket-Extensions: expected extension name",
        ))?;
        let is_deflate = name.eq_ignore_ascii_case(b"permessage-deflate");
        let mut offer = Offer::default();
        loop {
            cur.skip_ows();
            if !cur.eat(b';') {
                break;
            }
            cur.skip_ows();
            let param = cur.token().ok_or(ExtensionError(
                "malformed Sec-WebSocket-Extensions: expected parameter name",
            ))?;
            cur.skip_ows();
            let value = if cur.eat(b'=') {
                cur.skip_ows();
                Some(cur.param_value()?)
            } else {
                None
            };
            if is_deflate {
                offer.apply(param, value);
            }
        }
        cur.skip_ows();
        if !cur.rest.is_empty() && !cur.eat(b',') {
            return Err(ExtensionError(
                "malformed Sec-WebSocket-Extensions: expected ',' or ';'",
            ));
        }
        if is_deflate && accepted.is_none() {
            *accepted = offer.accept(settings);
        }
    }
}

/// A byte cursor over one header value.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn skip_ows(&mut self) {
        while let [b' ' | b'\t', rest @ ..] = self.rest {
            self.rest = rest;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        match self.rest.split_first() {
            Some((&b, rest)) if b == byte => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    /// An RFC 7230 token, or `None` if there is none here.
    fn token(&mut self) -> Option<&'a [u8]> {
        let len = self.rest.iter().take_while(|&&b| is_tchar(b)).count();
        let (token, rest) = self.rest.split_at(len);
        self.rest = rest;
        (len > 0).then_some(token)
    }

    /// A token or quoted-string, returned raw: quoted-string contents still
    /// carry their escapes, see [`unescape`].
    fn param_value(&mut self) -> Result<&'a [u8], ExtensionError> {
        if let Some(token) = self.token() {
            return Ok(token);
        }
        let malformed = ExtensionError("malformed Sec-WebSocket-Extensions: bad parameter value");
        let Some(inner) = self.rest.strip_prefix(b"\"") else {
            return Err(malformed);
        };
        let mut i = 0;
        while let Some(&b) = inner.get(i) {
            match b {
                b'"' => {
                    self.rest = &inner[i + 1..];
                    return Ok(&inner[..i]);
                }
                // quoted-pair: the next byte is literal, any visible or blank one.
                b'\\' => match inner.get(i + 1) {
                    Some(&next) if next == b'\t' || (next >= b' ' && next != 0x7f) => i += 2,
                    _ => return Err(malformed),
                },
                b'\t' | b' '..=b'~' | 0x80..=0xff => i += 1,
                _ => return Err(malformed),
            }
        }
        Err(malformed)
    }
}

/// RFC 7230 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The bytes of a raw parameter value with quoted-pair escapes removed
/// (tokens contain no backslash, so this is the identity for them).
fn unescape(raw: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut escaped = false;
    raw.iter().copied().filter(move |&b| {
        let keep = escaped || b != b'\\';
        escaped = !escaped && b == b'\\';
        keep
    })
}

/// `server-max-window-bits = 1*DIGIT`: decimal 8..=15, no leading zeros.
fn parse_window_bits(raw: &[u8]) -> Option<u8> {
    let mut digits = unescape(raw);
    let first = digits.next().filter(u8::is_ascii_digit)? - b'0';
    let bits = match digits.next() {
        None => first,
        Some(second) if first == 1 && second.is_ascii_digit() && digits.next().is_none() => {
            10 + second - b'0'
        }
        Some(_) => return None,
    };
    (MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
        .contains(&bits)
        .then_some(bits)
}

/// The parameters of one permessage-deflate offer, as parsed so far.
struct Offer {
    /// Cleared by any unknown, duplicate or invalid parameter.
    valid: bool,
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

impl Default for Offer {
    fn default() -> Self {
        Self {
            valid: true,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: None,
        }
    }
}

impl Offer {
    fn apply(&mut self, name: &[u8], value: Option<&[u8]>) {
        let ok = if name.eq_ignore_ascii_case(b"server_no_context_takeover") {
            value.is_none() && !std::mem::replace(&mut self.server_no_context_takeover, true)
        } else if name.eq_ignore_ascii_case(b"client_no_context_takeover") {
            value.is_none() && !std::mem::replace(&mut self.client_no_context_takeover, true)
        } else if name.eq_ignore_ascii_case(b"server_max_window_bits") {
            match value.and_then(parse_window_bits) {
                Some(bits) => self.server_max_window_bits.replace(bits).is_none(),
                None => false,
            }
        } else if name.eq_ignore_ascii_case(b"client_max_window_bits") {
            // No value means "I accept a limit"; a bad value invalidates the offer.
            match value.map(parse_window_bits) {
                Some(None) => false,
                bits => self
                    .client_max_window_bits
                    .replace(bits.flatten())
                    .is_none(),
            }
        } else {
            false
        };
        self.valid &= ok;
    }

    fn accept(&self, settings: &DeflateSettings) -> Option<Negotiated> {
        if !self.valid {
            return None;
        }
        let server_limit = settings
            .server_max_window_bits
            .clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS);
        let server_max_window_bits = match self.server_max_window_bits {
            // We cannot compress within a window this small; decline.
            Some(bits) if bits < MIN_ZLIB_WINDOW_BITS => return None,
            Some(bits) => bits.min(server_limit),
            // RFC 7692 7.1.2.1 lets the response carry it even if not offered.
            None => server_limit,
        };
        let client_limit = settings
            .client_max_window_bits
            .clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        let client_max_window_bits = match self.client_max_window_bits {
            // Not offered: the client may not understand a limit, so it uses 15.
            None => MAX_WINDOW_BITS,
            Some(None) => client_limit,
            Some(Some(bits)) => bits.min(client_limit),
        };
        Some(Negotiated {
            server_no_context_takeover: true,
            client_no_context_takeover: self.client_no_context_takeover,
            server_max_window_bits,
            client_max_window_bits,
        })
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The message inflates to more than the allowed size (close with 1009).
    TooBig,
    /// The data is not valid deflate (close with 1007).
    Corrupt,
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooBig => "decompressed message exceeds the size limit",
            Self::Corrupt => "invalid compressed data",
        })
    }
}

impl std::error::Error for InflateError {}

/// Per-connection decompressor for messages the client sent with RSV1 set.
///
/// zlib state (about 48 KiB: zlib-rs keeps a 32 KiB window whatever the
/// negotiated size) is allocated on the first compressed message, so
/// an idle connection only pays for this small struct, and is freed after
/// each message when `client_no_context_takeover` was agreed (and after any
/// error).
#[derive(Debug)]
pub struct Inflater {
    state: Option<Box<Decompress>>,
    window_bits: u8,
    no_context_takeover: bool,
}

impl Inflater {
    /// An inflater for the parameters agreed with one client.
    pub fn new(params: Negotiated) -> Self {
        Self {
            state: None,
            // A window of 8 bits is inflated with 9; see the module docs.
            window_bits: params
                .client_max_window_bits
                .clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS),
            no_context_takeover: params.client_no_context_takeover,
        }
    }

    /// Inflate one complete compressed message (all frames' payloads
    /// concatenated by the caller) into `out` (appended), appending the
    /// 0x00 0x00 0xff 0xff tail per RFC 7692 (fed to zlib, not copied).
    ///
    /// Fails with [`InflateError::TooBig`] as soon as the output would exceed
    /// `max_output` bytes, so a deflate bomb costs at most `max_output` plus
    /// one step of output (up to 64 KiB), not what the data expands to. `out`
    /// grows with what is actually produced, though its amortized growth may
    /// leave capacity up to about twice that. Corrupt data fails with
    /// [`InflateError::Corrupt`]. On error `out` is truncated back to its
    /// original length; the connection should then be closed.
    ///
    /// A message ending in a final (BFINAL) block is accepted and whatever
    /// follows it ignored, as RFC 7692 7.2.3.4 allows; the next message then
    /// starts a new deflate stream. An empty `compressed` is an empty message.
    pub fn inflate(
        &mut self,
        compressed: &[u8],
        max_output: usize,
        out: &mut BytesMut,
    ) -> Result<(), InflateError> {
        if compressed.is_empty() {
            // Inflating just the tail would leave zlib inside a stored block.
            return Ok(());
        }
        let window_bits = self.window_bits;
        let state = self
            .state
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, window_bits)));
        let mut sink = Sink {
            start: out.len(),
            out,
            max_output,
            chunk: compressed
                .len()
                .saturating_mul(4)
                .clamp(MIN_CHUNK, MAX_CHUNK),
        };
        let mut result = sink.feed(state, compressed);
        if result == Ok(false) {
            result = sink.feed(state, &TAIL);
        }
        // Keep the window only for a stream that continues into the next message.
        if result != Ok(false) || self.no_context_takeover {
            self.state = None;
        }
        if result.is_err() {
            sink.out.truncate(sink.start);
        }
        result.map(|_| ())
    }
}

/// Where one message's inflated bytes go, with the size guard.
struct Sink<'a> {
    out: &'a mut BytesMut,
    /// `out.len()` before this message.
    start: usize,
    max_output: usize,
    /// Size of the next output step.
    chunk: usize,
}

impl Sink<'_> {
    /// Runs `input` through `state` until all of it is consumed and all
    /// resulting output is written. Returns whether the deflate stream ended.
    fn feed(&mut self, state: &mut Decompress, mut input: &[u8]) -> Result<bool, InflateError> {
        loop {
            let produced = self.out.len() - self.start;
            // One byte past the limit is enough to detect overflow.
            let room = self
                .chunk
                .min(self.max_output.saturating_add(1).saturating_sub(produced));
            if room == 0 {
                return Err(InflateError::TooBig);
            }
            let len = self.out.len();
            self.out.resize(len + room, 0);
            let (in_before, out_before) = (state.total_in(), state.total_out());
            let status = state.decompress(input, &mut self.out[len..], FlushDecompress::Sync);
            let read = (state.total_in() - in_before) as usize;
            let written = (state.total_out() - out_before) as usize;
            self.out.truncate(len + written);
            input = input.get(read..).unwrap_or_default();

            let status = status.map_err(|_| InflateError::Corrupt)?;
            if self.out.len() - self.start > self.max_output {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                return Ok(true);
            }
            if written == room {
                // Output may be pending; give zlib a bigger step next time.
                self.chunk = (self.chunk * 2).min(MAX_CHUNK);
            } else if input.is_empty() {
                return Ok(false);
            } else if read == 0 {
                // Input and room left but no progress: zlib is stuck.
                return Err(InflateError::Corrupt);
            }
        }
    }
}

/// Compressor for outgoing messages. Every message is compressed
/// independently (no context takeover).
///
/// Meant to be long-lived (e.g. one per shard): the zlib state and an output
/// buffer sized for the largest message so far are reused.
#[derive(Debug)]
pub struct Deflater {
    compress: Compress,
    scratch: Vec<u8>,
}

impl Deflater {
    /// A compressor using an LZ77 window of `window_bits` (8..=15; 8 is used
    /// as 9, zlib's minimum for raw deflate, and other values are clamped).
    /// Its output suits clients whose
    /// [`Negotiated::server_max_window_bits`] is at least the window used.
    pub fn new(window_bits: u8) -> Self {
        let bits = window_bits.clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS);
        Self {
            compress: Compress::new_with_window_bits(Compression::new(LEVEL), false, bits),
            scratch: Vec::new(),
        }
    }

    /// Compress one message payload; returns the bytes to put in the frame
    /// (the trailing 0x00 0x00 0xff 0xff removed as RFC 7692 requires). An
    /// empty payload gives the single byte 0x00 (RFC 7692 7.2.3.6).
    pub fn compress(&mut self, payload: &[u8]) -> Bytes {
        self.compress.reset();
        self.scratch.clear();
        // Incompressible data grows by a few bytes per stored block; this
        // covers it, so one pass is the norm.
        self.scratch
            .reserve(payload.len() + payload.len() / 1024 + 64);
        let mut input = payload;
        loop {
            if self.scratch.len() == self.scratch.capacity() {
                self.scratch.reserve(MAX_CHUNK);
            }
            let (in_before, out_before) = (self.compress.total_in(), self.scratch.len());
            let status = self
                .compress
                .compress_vec(input, &mut self.scratch, FlushCompress::Sync);
            if status.is_err() {
                // Not expected from a healthy zlib state; stay correct anyway.
                return stored_blocks(payload);
            }
            let read = (self.compress.total_in() - in_before) as usize;
            input = input.get(read..).unwrap_or_default();
            // zlib: the flush is complete once it returns with output space left.
            if input.is_empty() && self.scratch.len() < self.scratch.capacity() {
                break;
            }
            if read == 0 && self.scratch.len() == out_before {
                // Work left but no progress: never spin on a confused zlib.
                return stored_blocks(payload);
            }
        }
        match self.scratch.strip_suffix(&TAIL) {
            // Copy into an exact-size buffer: the frame may sit in many
            // clients' queues, so it should not pin the scratch capacity.
            Some(body) => Bytes::copy_from_slice(body),
            None => stored_blocks(payload),
        }
    }
}

/// `payload` as uncompressed deflate blocks in RFC 7692 form (RFC 7692
/// 7.2.3.3): always valid, used if zlib misbehaves.
fn stored_blocks(payload: &[u8]) -> Bytes {
    let blocks = payload.chunks(usize::from(u16::MAX));
    let mut out = BytesMut::with_capacity(payload.len() + 5 * blocks.len() + 1);
    for block in blocks {
        // BFINAL=0 and BTYPE=00 in the low bits, then padding to the byte.
        out.put_u8(0);
        let len = block.len() as u16;
        out.put_u16_le(len);
        out.put_u16_le(!len);
        out.put_slice(block);
    }
    // Header of the flush's empty stored block; its LEN/NLEN is the stripped tail.
    out.put_u8(0);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiate_one(header: &str) -> Result<Option<Negotiated>, ExtensionError> {
        negotiate_with(header, &DeflateSettings::default())
    }

    fn negotiate_with(
        header: &str,
        settings: &DeflateSettings,
    ) -> Result<Option<Negotiated>, ExtensionError> {
        negotiate(&[header.as_bytes()], settings)
    }

    fn params(client_no_context_takeover: bool, server: u8, client: u8) -> Negotiated {
        Negotiated {
            server_no_context_takeover: true,
            client_no_context_takeover,
            server_max_window_bits: server,
            client_max_window_bits: client,
        }
    }

    fn inflate(inflater: &mut Inflater, compressed: &[u8]) -> Result<Vec<u8>, InflateError> {
        let mut out = BytesMut::new();
        inflater.inflate(compressed, usize::MAX, &mut out)?;
        Ok(out.to_vec())
    }

    /// Deterministic data: `text` repeats words (compressible), otherwise noise.
    fn sample(len: usize, text: bool, seed: u64) -> Vec<u8> {
        const WORDS: [&[u8]; 8] = [
            b"{\"room\":",
            b"\"lobby\",",
            b"\"user\":",
            b"\"price\":",
            b"1234.5,",
            b"\"msg\":\"hello\"",
            b"},",
            b" ",
        ];
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut data = Vec::with_capacity(len + 16);
        while data.len() < len {
            let r = next();
            if text {
                data.extend_from_slice(WORDS[(r % 8) as usize]);
            } else {
                data.extend_from_slice(&r.to_le_bytes());
            }
        }
        data.truncate(len);
        data
    }

    /// Raw deflate in RFC 7692 form from a context-keeping compressor.
    fn compress_keeping_context(compress: &mut Compress, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 64);
        compress
            .compress_vec(payload, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - TAIL.len());
        out
    }

    /// A fixed-Huffman deflate message of one literal 0 followed by `matches`
    /// copies of <length 258, distance 1>: 13 bits for every 258 zeros.
    fn zeros_bomb(matches: usize) -> Vec<u8> {
        struct Bits {
            out: Vec<u8>,
            acc: u64,
            len: u32,
        }
        impl Bits {
            // Header fields go least significant bit first.
            fn put(&mut self, value: u64, len: u32) {
                self.acc |= value << self.len;
                self.len += len;
                while self.len >= 8 {
                    self.out.push(self.acc as u8);
                    self.acc >>= 8;
                    self.len -= 8;
                }
            }
            // Huffman codes go most significant bit first.
            fn code(&mut self, code: u64, len: u32) {
                let reversed = code.reverse_bits() >> (64 - len);
                self.put(reversed, len);
            }
        }
        let mut bits = Bits {
            out: Vec::with_capacity(matches * 13 / 8 + 16),
            acc: 0,
            len: 0,
        };
        bits.put(0, 1); // BFINAL=0
        bits.put(1, 2); // BTYPE=01, fixed Huffman
        bits.code(0b0011_0000, 8); // literal 0
        for _ in 0..matches {
            bits.code(0b1100_0101, 8); // length code 285: 258
            bits.code(0, 5); // distance code 0: 1
        }
        bits.code(0, 7); // end of block
        bits.put(0, 3); // empty stored block header of the sync flush...
        bits.put(0, 7); // ...padded to a byte; its LEN/NLEN is the stripped tail.
        bits.out
    }

    #[test]
    fn accepts_plain_offer() {
        let n = negotiate_one("permessage-deflate").unwrap().unwrap();
        assert_eq!(n, params(false, 15, 15));
        assert_eq!(
            n.response_header(),
            "permessage-deflate; server_no_context_takeover"
        );
    }

    #[test]
    fn answers_client_max_window_bits_without_value_with_configured_limit() {
        let settings = DeflateSettings {
            client_max_window_bits: 10,
            ..DeflateSettings::default()
        };
        let n = negotiate_with("permessage-deflate; client_max_window_bits", &settings)
            .unwrap()
            .unwrap();
        assert_eq!(n, params(false, 15, 10));
        assert_eq!(
            n.response_header(),
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
        );
        // With the default limit the parameter is simply left out.
        let n = negotiate_one("permessage-deflate; client_max_window_bits")
            .unwrap()
            .unwrap();
        assert_eq!(n, params(false, 15, 15));
    }

    #[test]
    fn never_limits_client_window_when_not_offered() {
        let settings = DeflateSettings {
            client_max_window_bits: 9,
            ..DeflateSettings::default()
        };
        let n = negotiate_with("permessage-deflate", &settings)
            .unwrap()
            .unwrap();
        assert_eq!(n.client_max_window_bits, 15);
        assert!(!n.response_header().contains("client_max_window_bits"));
    }

    #[test]
    fn takes_smaller_of_offered_and_configured_windows() {
        let settings = DeflateSettings {
            enabled: true,
            server_max_window_bits: 12,
            client_max_window_bits: 11,
        };
        let offer = "permessage-deflate; client_no_context_takeover; \
            server_max_window_bits=10; client_max_window_bits=13";
        let n = negotiate_with(offer, &settings).unwrap().unwrap();
        assert_eq!(n, params(true, 10, 11));
        assert_eq!(
            n.response_header(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=11"
        );
    }

    #[test]
    fn announces_configured_server_window_even_if_not_offered() {
        let settings = DeflateSettings {
            server_max_window_bits: 8,
            ..DeflateSettings::default()
        };
        let n = negotiate_with("permessage-deflate", &settings)
            .unwrap()
            .unwrap();
        // 8 is not possible with zlib, so the server answers 9.
        assert_eq!(n.server_max_window_bits, 9);
        assert!(n.response_header().ends_with("; server_max_window_bits=9"));
    }

    #[test]
    fn accepts_quoted_values_and_any_case() {
        let n = negotiate_one(
            "PerMessage-Deflate; Server_Max_Window_Bits=\"10\"; client_max_window_bits=\"1\\2\"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(n, params(false, 10, 12));
    }

    #[test]
    fn skips_invalid_offer_and_accepts_next() {
        let n = negotiate_one(
            "permessage-deflate; server_max_window_bits=16, \
             permessage-deflate; client_no_context_takeover",
        )
        .unwrap()
        .unwrap();
        assert_eq!(n, params(true, 15, 15));
    }

    #[test]
    fn looks_through_every_header_value_in_order() {
        let values: [&[u8]; 3] = [
            b"x-webkit-deflate-frame",
            b"permessage-deflate; bogus",
            b"permessage-deflate; server_max_window_bits=11, permessage-deflate",
        ];
        let n = negotiate(&values, &DeflateSettings::default())
            .unwrap()
            .unwrap();
        assert_eq!(n.server_max_window_bits, 11);
    }

    #[test]
    fn declines_offer_with_unknown_parameter() {
        assert_eq!(negotiate_one("permessage-deflate; foo"), Ok(None));
        assert_eq!(negotiate_one("permessage-deflate; foo=1"), Ok(None));
    }

    #[test]
    fn declines_offer_with_duplicate_parameter() {
        for offer in [
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        ] {
            assert_eq!(negotiate_one(offer), Ok(None), "{offer}");
        }
    }

    #[test]
    fn declines_offer_with_invalid_values() {
        for offer in [
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=a",
            "permessage-deflate; server_max_window_bits=\"\"",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=255",
            "permessage-deflate; client_max_window_bits=1.5",
        ] {
            assert_eq!(negotiate_one(offer), Ok(None), "{offer}");
        }
    }

    #[test]
    fn declines_server_window_of_8_which_zlib_cannot_produce() {
        assert_eq!(
            negotiate_one("permessage-deflate; server_max_window_bits=8"),
            Ok(None)
        );
        let n = negotiate_one(
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits=8",
        )
        .unwrap()
        .unwrap();
        assert_eq!(n, params(false, 15, 8));
    }

    #[test]
    fn returns_none_when_disabled() {
        let settings = DeflateSettings {
            enabled: false,
            ..DeflateSettings::default()
        };
        assert_eq!(negotiate_with("permessage-deflate", &settings), Ok(None));
    }

    #[test]
    fn ignores_other_extensions() {
        assert_eq!(negotiate_one("x-webkit-deflate-frame"), Ok(None));
        assert_eq!(negotiate(&[], &DeflateSettings::default()), Ok(None));
        let n = negotiate_one("foo; bar=\"a, b; c\", permessage-deflate")
            .unwrap()
            .unwrap();
        assert_eq!(n, params(false, 15, 15));
    }

    #[test]
    fn tolerates_whitespace_and_empty_list_elements() {
        for header in [
            " , permessage-deflate ,",
            "permessage-deflate\t;\tclient_max_window_bits = 12 ",
            "",
            " ,, ",
        ] {
            assert!(negotiate_one(header).is_ok(), "{header:?}");
        }
        let n = negotiate_one("\tpermessage-deflate ; client_max_window_bits = 12 ,")
            .unwrap()
            .unwrap();
        assert_eq!(n.client_max_window_bits, 12);
    }

    #[test]
    fn rejects_unparsable_syntax() {
        for header in [
            ";",
            "permessage-deflate;",
            "permessage-deflate; =1",
            "permessage-deflate; a=",
            "permessage-deflate; a=b=c",
            "permessage-deflate x",
            "permessage-deflate; a=\"unterminated",
            "permessage-deflate; a=\"bad\\",
            "\"permessage-deflate\"",
            "permessage-deflate; a=\"x\" y",
            "perméssage-deflate",
        ] {
            assert!(negotiate_one(header).is_err(), "{header:?}");
        }
        // A malformed value anywhere fails, even after an acceptable offer.
        let values: [&[u8]; 2] = [b"permessage-deflate", b"foo;;"];
        assert!(negotiate(&values, &DeflateSettings::default()).is_err());
    }

    #[test]
    fn round_trips_messages_of_many_sizes() {
        for bits in [8, 9, 12, 15] {
            let mut deflater = Deflater::new(bits);
            let mut inflater = Inflater::new(params(false, 15, bits));
            for (len, text) in [
                (0, true),
                (1, true),
                (100, true),
                (65_537, true),
                (70_000, false),
                (1 << 20, true),
                (1 << 20, false),
            ] {
                let payload = sample(len, text, len as u64 + u64::from(bits));
                let compressed = deflater.compress(&payload);
                if text && len > 1000 {
                    assert!(compressed.len() < len / 2, "{len}: {}", compressed.len());
                }
                assert_eq!(inflate(&mut inflater, &compressed).unwrap(), payload);
            }
        }
    }

    #[test]
    fn messages_inflate_independently() {
        let mut deflater = Deflater::new(15);
        let messages = [
            sample(5000, true, 1),
            sample(5000, true, 1),
            sample(10, true, 2),
        ];
        let compressed: Vec<Bytes> = messages.iter().map(|m| deflater.compress(m)).collect();
        // Identical payloads compress identically: nothing carried over.
        assert_eq!(compressed[0], compressed[1]);
        // Any message decodes with a fresh inflater, in any order.
        for (message, data) in messages.iter().zip(&compressed).rev() {
            let mut fresh = Inflater::new(params(true, 15, 15));
            assert_eq!(&inflate(&mut fresh, data).unwrap(), message);
        }
    }

    #[test]
    fn deflater_window_limits_match_distance() {
        // Noise with a 300-byte block repeated 2300 bytes later: only the
        // large window reaches back far enough to reuse it. (zlib-rs inflate
        // always keeps 32 KiB of history, so it cannot check this for us.)
        let block = sample(300, false, 11);
        let mut payload = block.clone();
        payload.extend(sample(2000, false, 12));
        payload.extend(&block);
        let wide = Deflater::new(15).compress(&payload);
        let narrow = Deflater::new(9).compress(&payload);
        assert!(
            wide.len() + 250 < narrow.len(),
            "{} vs {}",
            wide.len(),
            narrow.len()
        );
        let mut inflater = Inflater::new(params(false, 15, 15));
        assert_eq!(inflate(&mut inflater, &wide).unwrap(), payload);
        assert_eq!(inflate(&mut inflater, &narrow).unwrap(), payload);
    }

    #[test]
    fn empty_payload_compresses_to_single_zero_byte() {
        let mut deflater = Deflater::new(15);
        assert_eq!(&deflater.compress(b"")[..], [0x00]);
        let mut inflater = Inflater::new(params(false, 15, 15));
        assert_eq!(inflate(&mut inflater, &[0x00]).unwrap(), b"");
        assert_eq!(inflate(&mut inflater, &[]).unwrap(), b"");
        // The stream is still in step afterwards.
        assert_eq!(
            inflate(&mut inflater, &deflater.compress(b"x")).unwrap(),
            b"x"
        );
    }

    #[test]
    fn inflates_rfc7692_hello_example() {
        // RFC 7692 7.2.3.1.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut inflater = Inflater::new(params(false, 15, 15));
        assert_eq!(inflate(&mut inflater, &hello).unwrap(), b"Hello");
    }

    #[test]
    fn inflates_rfc7692_shared_window_example() {
        // RFC 7692 7.2.3.2: the second "Hello" refers back into the first.
        let mut inflater = Inflater::new(params(false, 15, 15));
        let first = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let second = [0xf2, 0x00, 0x11, 0x00, 0x00];
        assert_eq!(inflate(&mut inflater, &first).unwrap(), b"Hello");
        assert_eq!(inflate(&mut inflater, &second).unwrap(), b"Hello");
    }

    #[test]
    fn inflates_rfc7692_stored_block_example() {
        // RFC 7692 7.2.3.3.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        let mut inflater = Inflater::new(params(false, 15, 15));
        assert_eq!(inflate(&mut inflater, &stored).unwrap(), b"Hello");
        // The fallback encoder writes exactly this form.
        assert_eq!(&stored_blocks(b"Hello")[..], stored);
        assert_eq!(&stored_blocks(b"")[..], [0x00]);
        let big = sample(200_000, false, 3);
        assert_eq!(inflate(&mut inflater, &stored_blocks(&big)).unwrap(), big);
    }

    #[test]
    fn inflates_rfc7692_bfinal_example_and_restarts_stream() {
        // RFC 7692 7.2.3.4: a final block, then a byte to be ignored.
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        let mut inflater = Inflater::new(params(false, 15, 15));
        assert_eq!(inflate(&mut inflater, &bfinal).unwrap(), b"Hello");
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&mut inflater, &hello).unwrap(), b"Hello");
    }

    #[test]
    fn inflates_rfc7692_two_block_example() {
        // RFC 7692 7.2.3.5: "He" and "llo" in two blocks.
        let two_blocks = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        let mut inflater = Inflater::new(params(true, 15, 15));
        assert_eq!(inflate(&mut inflater, &two_blocks).unwrap(), b"Hello");
    }

    #[test]
    fn inflates_with_context_takeover() {
        let mut client = Compress::new_with_window_bits(Compression::default(), false, 15);
        let message = sample(3000, true, 9);
        let first = compress_keeping_context(&mut client, &message);
        let second = compress_keeping_context(&mut client, &message);
        assert!(second.len() < first.len() / 4, "second refers to the first");

        let mut inflater = Inflater::new(params(false, 15, 15));
        assert_eq!(inflate(&mut inflater, &first).unwrap(), message);
        assert!(inflater.state.is_some(), "window kept for the next message");
        assert_eq!(inflate(&mut inflater, &second).unwrap(), message);

        // Without the window the reference back into the first message fails.
        let mut forgetful = Inflater::new(params(true, 15, 15));
        assert_eq!(inflate(&mut forgetful, &first).unwrap(), message);
        assert_eq!(inflate(&mut forgetful, &second), Err(InflateError::Corrupt));
    }

    #[test]
    fn frees_state_after_message_without_context_takeover() {
        assert!(std::mem::size_of::<Inflater>() <= 16);
        let mut inflater = Inflater::new(params(true, 15, 15));
        assert!(inflater.state.is_none());
        let compressed = Deflater::new(15).compress(b"hello hello hello");
        assert_eq!(
            inflate(&mut inflater, &compressed).unwrap(),
            b"hello hello hello"
        );
        assert!(inflater.state.is_none());
    }

    #[test]
    fn enforces_output_limit_exactly() {
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut inflater = Inflater::new(params(false, 15, 15));
        let mut out = BytesMut::from(&b"prefix:"[..]);
        inflater.inflate(&hello, 5, &mut out).unwrap();
        assert_eq!(&out[..], b"prefix:Hello");
        assert_eq!(
            inflater.inflate(&hello, 4, &mut out),
            Err(InflateError::TooBig)
        );
        assert_eq!(&out[..], b"prefix:Hello", "output left untouched");
        assert!(inflater.state.is_none(), "state dropped after an error");
        assert_eq!(inflate(&mut inflater, &hello).unwrap(), b"Hello");
    }

    #[test]
    fn stops_deflate_bomb_at_limit() {
        // 1 + 406_440 * 258 bytes (just over 100 MiB) of zeros in ~660 KB.
        let bomb = zeros_bomb(406_440);
        let limit = 1 << 20;
        let mut inflater = Inflater::new(params(false, 15, 15));
        let mut out = BytesMut::new();
        assert_eq!(
            inflater.inflate(&bomb, limit, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.is_empty());
        assert!(
            out.capacity() <= 2 * (limit + MAX_CHUNK),
            "{}",
            out.capacity()
        );

        // The generator itself is sound: a small one inflates fully.
        let small = zeros_bomb(3);
        let mut inflater = Inflater::new(params(false, 15, 15));
        assert_eq!(
            inflate(&mut inflater, &small).unwrap(),
            vec![0; 1 + 3 * 258]
        );
    }

    #[test]
    fn stops_bomb_from_own_deflater_at_limit() {
        let zeros = vec![0; 16 << 20];
        let bomb = Deflater::new(15).compress(&zeros);
        let mut inflater = Inflater::new(params(false, 15, 15));
        let mut out = BytesMut::new();
        assert_eq!(
            inflater.inflate(&bomb, 1 << 20, &mut out),
            Err(InflateError::TooBig)
        );
        let mut out = BytesMut::new();
        inflater.inflate(&bomb, 16 << 20, &mut out).unwrap();
        assert_eq!(out.len(), 16 << 20);
    }

    #[test]
    fn reports_corrupt_input() {
        for corrupt in [
            &[0xff, 0xff, 0xff][..],                   // BTYPE=11 is reserved
            &[0x00, 0x05, 0x00, 0x00, 0x00, 0x48][..], // stored LEN != !NLEN
            &[0xf2, 0x00, 0x11, 0x00, 0x00][..],       // distance before the start
        ] {
            let mut inflater = Inflater::new(params(false, 15, 15));
            assert_eq!(
                inflate(&mut inflater, corrupt),
                Err(InflateError::Corrupt),
                "{corrupt:02x?}"
            );
            assert!(inflater.state.is_none());
        }
    }

    #[test]
    fn inflates_client_window_of_8_with_9() {
        let mut inflater = Inflater::new(params(true, 15, 8));
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&mut inflater, &hello).unwrap(), b"Hello");
    }
}
