//! Small helpers to write JSON log lines by hand, straight into a byte buffer: no
//! intermediate values, no `fmt` machinery on the request path (profiling showed the
//! formatter as the largest single cost of an access log line).

use std::cell::Cell;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Does this byte need escaping inside a JSON string?
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends `s` as a JSON string literal. Runs of plain bytes are copied whole.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    push_escaped(out, s);
    out.push(b'"');
}

/// Appends `s` as a JSON string literal without looking for bytes to escape: for text
/// whose alphabet cannot hold any (HTTP method tokens, request ids that passed
/// `sane_request_id` or were generated as hex, the gateway's own codes).
#[inline]
pub fn push_plain_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(!s.bytes().any(needs_escape), "{s:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A name from the config (route, upstream, backend) with its JSON string literal,
/// escaped once when the config is loaded instead of on every log line.
#[derive(Debug, Clone)]
pub struct LogName {
    pub text: String,
    /// `"text"`, escaped.
    pub json: Box<[u8]>,
}

impl LogName {
    pub fn new(text: &str) -> LogName {
        let mut json = Vec::with_capacity(text.len() + 2);
        push_str(&mut json, text);
        LogName {
            text: text.to_string(),
            json: json.into_boxed_slice(),
        }
    }
}

/// Appends the concatenation of `parts` as one JSON string literal.
pub fn push_str_parts(out: &mut Vec<u8>, parts: &[&str]) {
    out.push(b'"');
    for p in parts {
        push_escaped(out, p);
    }
    out.push(b'"');
}

fn push_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut plain_from = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip eight plain bytes at a time; most values have nothing to escape.
        while let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if any_needs_escape(u64::from_le_bytes(word)) {
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else { break };
        if needs_escape(b) {
            out.extend_from_slice(&bytes[plain_from..i]);
            plain_from = i + 1;
            push_escape(out, b);
        }
        i += 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
}

/// Does any byte of `w` need escaping (below 0x20, `"` or `\\`)? The classic
/// "has a zero byte" test, exact for the question "any byte?", applied three times.
#[inline]
fn any_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let q = w ^ (ONES * b'"' as u64);
    let quote = q.wrapping_sub(ONES) & !q & HIGH;
    let bs = w ^ (ONES * b'\\' as u64);
    let backslash = bs.wrapping_sub(ONES) & !bs & HIGH;
    (below_space | quote | backslash) != 0
}

fn push_escape(out: &mut Vec<u8>, b: u8) {
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        c => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(c >> 4) as usize]);
            out.push(HEX[(c & 0xf) as usize]);
        }
    }
}

/// Appends `"key":` (key must not need escaping), with the comma a previous field needs.
#[inline]
pub fn push_key(out: &mut Vec<u8>, key: &str) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

pub fn field_str(out: &mut Vec<u8>, key: &str, value: &str) {
    push_key(out, key);
    push_str(out, value);
}

#[inline]
pub fn push_u64(out: &mut Vec<u8>, value: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(value).as_bytes());
}

/// Milliseconds with three decimals (microsecond precision), e.g. `12.345`.
pub fn push_millis(out: &mut Vec<u8>, d: Duration) {
    millis_text(d, |text| out.extend_from_slice(text));
}

/// The text of `push_millis`, handed to `put` in pieces (for writers other than a Vec).
pub fn millis_text(d: Duration, mut put: impl FnMut(&[u8])) {
    let micros = d.as_micros() as u64;
    let mut whole = itoa::Buffer::new();
    put(whole.format(micros / 1000).as_bytes());
    let frac = (micros % 1000) as u32;
    put(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Lower-case hex of `bytes` (trace and span ids): written on the stack, 16 bytes at a
/// time, and appended in one copy each.
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for chunk in bytes.chunks(16) {
        let mut text = [0u8; 32];
        for (pair, b) in text.chunks_exact_mut(2).zip(chunk) {
            pair[0] = HEX[(b >> 4) as usize];
            pair[1] = HEX[(b & 0xf) as usize];
        }
        out.extend_from_slice(&text[..chunk.len() * 2]);
    }
}

/// An IP address in its usual text form (IPv4 without going through `fmt`).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.extend_from_slice(IpText::new(ip).as_bytes());
}

/// The text of an IP address, on the stack.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 48],
    len: usize,
}

thread_local! {
    /// The address this thread formatted last: a request formats its client's address
    /// up to three times (forwarding header, log line, span), and consecutive requests
    /// often come from the same address (a load balancer, a kept-alive client).
    static LAST_IP: Cell<Option<(IpAddr, IpText)>> = const { Cell::new(None) };
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        if let Some((last, text)) = LAST_IP.get() {
            if last == ip {
                return text;
            }
        }
        let text = Self::format(ip);
        LAST_IP.set(Some((ip, text)));
        text
    }

    fn format(ip: IpAddr) -> IpText {
        let mut text = IpText {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().iter().enumerate() {
                    if i > 0 {
                        text.buf[text.len] = b'.';
                        text.len += 1;
                    }
                    let mut digits = itoa::Buffer::new();
                    let d = digits.format(*octet).as_bytes();
                    text.buf[text.len..text.len + d.len()].copy_from_slice(d);
                    text.len += d.len();
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut text.buf[..]);
                let _ = write!(cursor, "{v6}");
                text.len = cursor.position() as usize;
            }
        }
        text
    }

    /// The text as bytes, for writers that take bytes (no UTF-8 check to pay).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

thread_local! {
    /// The last whole second this thread formatted, and its `YYYY-MM-DDTHH:MM:SS` text:
    /// lines in the same second only append the microseconds.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-27T09:10:31.123456Z`.
pub fn push_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let text = SECOND.with(|cached| {
        let (second, text) = cached.get();
        if second == secs {
            return text;
        }
        let text = second_text(secs);
        cached.set((secs, text));
        text
    });
    let micros = d.subsec_micros();
    let mut tail = *b".000000Z";
    for (i, pair) in [micros / 10_000, micros / 100 % 100, micros % 100]
        .into_iter()
        .enumerate()
    {
        tail[1 + 2 * i..3 + 2 * i].copy_from_slice(two_digits(pair));
    }
    out.extend_from_slice(&text);
    out.extend_from_slice(&tail);
}

/// `00` to `99` (values above 99 wrap).
fn two_digits(v: u32) -> &'static [u8] {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let i = (v % 100) as usize * 2;
    &PAIRS[i..i + 2]
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second.
fn second_text(secs: u64) -> [u8; 19] {
    let secs = secs as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, day) = civil_from_days(days);
    let mut text = [0u8; 19];
    let mut put = |at: usize, v: u32, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            text[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y.clamp(0, 9999) as u32, 4);
    put(5, m, 2);
    put(8, day, 2);
    put(11, (rem / 3600) as u32, 2);
    put(14, (rem % 3600 / 60) as u32, 2);
    put(17, (rem % 60) as u32, 2);
    text[4] = b'-';
    text[7] = b'-';
    text[10] = b'T';
    text[13] = b':';
    text[16] = b':';
    text
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn timestamp_string(now: SystemTime) -> String {
    let mut s = Vec::with_capacity(27);
    push_timestamp(&mut s, now);
    String::from_utf8(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_any_length() {
        let bytes: Vec<u8> = (0u8..40).map(|i| i.wrapping_mul(37)).collect();
        let mut out = Vec::new();
        push_hex(&mut out, &bytes);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp_string(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_770_631_123_456);
        assert_eq!(timestamp_string(t), "2026-11-27T09:10:31.123456Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&timestamp_string(leap)[..10], "2000-02-29");
        // the same second again comes from the cache, with fresh microseconds
        let later = t + Duration::from_micros(500_000);
        assert_eq!(timestamp_string(t), "2026-11-27T09:10:31.123456Z");
        assert_eq!(timestamp_string(later), "2026-11-27T09:10:31.623456Z");
    }

    #[test]
    fn escapes_every_position_of_a_word() {
        // each special byte at each offset of the 8-byte fast path, and plain text
        // around it, decodes back to the original
        for special in ["\"", "\\", "\n", "\u{0}", "\u{1f}"] {
            for at in 0..20 {
                let text = format!("{}{special}{}", "a".repeat(at), "é".repeat(5));
                let mut s = Vec::new();
                push_str(&mut s, &text);
                let back: String = serde_json::from_slice(&s).unwrap();
                assert_eq!(back, text);
            }
        }
        // bytes that the word test must not flag: 0x20, 0x7f and above, `!` `#` `[` `]`
        let plain = " \u{7f}!#[]~ü€".repeat(3);
        let mut s = Vec::new();
        push_str(&mut s, &plain);
        assert_eq!(s.len(), plain.len() + 2);
    }

    #[test]
    fn escaping_and_numbers() {
        let text = "x\"y\\\n\u{1}\u{1f} é plain";
        let mut s = b"{".to_vec();
        field_str(&mut s, "a", text);
        push_key(&mut s, "n");
        push_u64(&mut s, u64::MAX);
        push_key(&mut s, "ms");
        push_millis(&mut s, Duration::from_micros(12_005));
        for (key, ip) in [("ip", "10.0.255.1"), ("ip6", "::1")] {
            push_key(&mut s, key);
            s.push(b'"');
            push_ip(&mut s, ip.parse().unwrap());
            s.push(b'"');
        }
        s.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v["a"], text);
        assert_eq!(v["n"], u64::MAX);
        assert_eq!(v["ms"].to_string(), "12.005");
        assert_eq!(v["ip"], "10.0.255.1");
        assert_eq!(v["ip6"], "::1");
    }
}
