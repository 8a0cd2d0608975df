//! Header hygiene on the way to the agent and back: hop-by-hop headers (the gateway's
//! alone; pingora's own pass over the upstream request is off), forwarding headers,
//! request ids, and `RequestScan`, the one pass over a request's headers that finds
//! everything admission, tracing and forwarding need.

use std::cell::RefCell;
use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING,
};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::observe::json::IpText;
use crate::observe::trace_context::{parse_traceparent, TraceParent};

/// Header names the gateway looks up on every request, parsed once at compile time (a
/// lookup by `&str` parses and validates the name each time).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// The IETF draft's structured fields (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY_SF: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT_SF: HeaderName = HeaderName::from_static("ratelimit");
pub const X_PAGINATION_CLAMPED: HeaderName = HeaderName::from_static("x-pagination-clamped");

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the HTTP/2 upgrade's `http2-settings`)
/// that never cross the gateway, as text: scans compare names as text (a header that is
/// none of them costs nine length comparisons; `HeaderName` equality costs several
/// times that). Transfer-Encoding is not listed: pingora frames bodies itself from it
/// (admission accepts only `chunked`).
const HOP_BY_HOP_TEXT: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "upgrade",
    "trailer",
    "http2-settings",
];

/// Where `connection`, `te` and `upgrade` are in `HOP_BY_HOP_TEXT` (a unit test holds them
/// together).
const CONNECTION_INDEX: usize = 0;
const TE_INDEX: usize = 5;
const UPGRADE_INDEX: usize = 6;

/// `HOP_BY_HOP_TEXT` as header names, for removal.
static HOP_BY_HOP: [HeaderName; 9] = [
    HeaderName::from_static(HOP_BY_HOP_TEXT[0]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[1]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[2]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[3]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[4]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[5]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[6]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[7]),
    HeaderName::from_static(HOP_BY_HOP_TEXT[8]),
];

/// Most names one `Connection` header may nominate (a bound on the work a request can
/// ask for; the same as pingora's).
const MAX_NOMINATIONS: usize = 10;

/// Edits a request header as a plain `http` header map.
///
/// pingora keeps a case-preserving name map beside every header it parsed, and each edit
/// through its methods re-parses the name, allocates it twice and updates both maps:
/// about 1.5k instructions an insert, and a proxied request takes nine. The gateway
/// moves the parts out instead, lets the case map go, edits the map with names parsed at
/// compile time, and moves the parts back. Names then go out lower-case (standard ones
/// title-case), as Envoy sends them; header names are case-insensitive (RFC 9110 §5.1).
pub fn edit_request<R>(req: &mut RequestHeader, edit: impl FnOnce(&mut HeaderMap) -> R) -> R {
    // A request-target the URI does not reproduce (absolute-form, not UTF-8) would not
    // survive the parts; such rare targets are kept aside and put back.
    let uri_target = req
        .uri
        .path_and_query()
        .map_or(&b""[..], |p| p.as_str().as_bytes());
    let raw_target =
        (req.raw_path() != uri_target || !req.raw_path_is_utf8()).then(|| req.raw_path().to_vec());
    let end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
    let out = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(raw) = raw_target {
        // The bytes were accepted as this request's target once; they parse again.
        let _ = req.set_raw_path(&raw);
    }
    if let Some(end) = end_stream {
        req.set_send_end_stream(end);
    }
    out
}

/// Edits a response header as a plain `http` header map (see [`edit_request`]).
pub fn edit_response<R>(resp: &mut ResponseHeader, edit: impl FnOnce(&mut HeaderMap) -> R) -> R {
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, placeholder));
    let out = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        let _ = resp.set_reason_phrase(reason.as_deref());
    }
    out
}

/// Which fixed hop-by-hop header this is, as an index into `HOP_BY_HOP`.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let text = name.as_str();
    HOP_BY_HOP_TEXT.iter().position(|hop| *hop == text)
}

/// The hop-by-hop headers of one message, found in a scan of its headers: which of
/// `HOP_BY_HOP` are present, and what `Connection` says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HopByHop {
    /// Bits of `HOP_BY_HOP` indices.
    present: u16,
    /// `Connection` names a header beyond `close` and `keep-alive`.
    nominates: bool,
    /// `Connection` lists `close`.
    close: bool,
    /// Tokens `Connection` lists.
    nominations: usize,
    /// `Connection` lists something that is not a header name (RFC 9110 token), or
    /// names a header the gateway itself sets (`host`, `x-forwarded-*`).
    bad_nomination: bool,
    /// `Connection` lists `upgrade`, and `Upgrade` offers (or accepts) `websocket`.
    connection_upgrade: bool,
    upgrade_websocket: bool,
    /// `TE` lists `trailers`: the client takes trailer fields (gRPC requires it).
    te_trailers: bool,
}

impl HopByHop {
    /// Scans a header map.
    pub fn of(headers: &HeaderMap) -> HopByHop {
        let mut found = HopByHop::default();
        for (name, value) in headers {
            found.note(name, value);
        }
        found
    }

    /// Notes one header of a scan; true when it is hop-by-hop.
    pub fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> bool {
        let Some(i) = hop_by_hop_index(name) else {
            return false;
        };
        self.present |= 1 << i;
        if i == UPGRADE_INDEX {
            self.upgrade_websocket |=
                connection_options(value).any(|p| p.eq_ignore_ascii_case(b"websocket"));
        }
        if i == TE_INDEX {
            self.te_trailers |=
                connection_options(value).any(|p| p.eq_ignore_ascii_case(b"trailers"));
        }
        if i == CONNECTION_INDEX {
            for token in connection_options(value) {
                self.nominations += 1;
                self.connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if !is_persistence_option(token) {
                    self.nominates = true;
                    self.bad_nomination |= !token.iter().all(|b| is_tchar(*b))
                        || PROTECTED
                            .iter()
                            .any(|p| token.eq_ignore_ascii_case(p.as_bytes()));
                }
            }
        }
        true
    }

    /// Why a request's `Connection` header cannot be honoured, when it cannot.
    pub fn connection_problem(&self) -> Option<&'static str> {
        if self.nominations > MAX_NOMINATIONS {
            Some("the Connection header lists too many options")
        } else if self.bad_nomination {
            Some("the Connection header may only list header names, and not Host or X-Forwarded-*")
        } else {
            None
        }
    }

    /// A WebSocket handshake (RFC 6455 §4): `Connection: upgrade` with
    /// `Upgrade: websocket`, on a request or on the agent's `101`.
    pub fn websocket(&self) -> bool {
        self.connection_upgrade && self.upgrade_websocket
    }

    /// Whether the client's `TE` says it takes trailers: the one TE the agent is told,
    /// as HTTP/2 allows (RFC 9113 §8.2.2) and gRPC servers expect.
    pub fn te_trailers(&self) -> bool {
        self.te_trailers
    }

    /// Whether `Connection` lists `close`.
    pub fn connection_close(&self) -> bool {
        self.close
    }

    /// Removes what the scan found, and every header `Connection` nominates.
    pub fn strip(self, headers: &mut HeaderMap) {
        if self.present == 0 {
            return;
        }
        if self.nominates {
            if let Some(nominated) = connection_nominated(headers) {
                for name in nominated {
                    if !KEPT_WHEN_NOMINATED.contains(&name.as_str()) {
                        headers.remove(&name);
                    }
                }
            }
        }
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            if self.present & (1 << i) != 0 {
                headers.remove(name);
            }
        }
    }
}

/// The two hop-by-hop headers a WebSocket handshake carries across the gateway.
pub fn put_websocket_upgrade(map: &mut HeaderMap) {
    map.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    map.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Headers a request's `Connection` may not nominate: the gateway sets them itself.
const PROTECTED: [&str; 4] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Nominated headers that stay anyway: the body's framing, and the protected ones (a
/// response may nominate them; only the request side refuses to).
const KEPT_WHEN_NOMINATED: [&str; 6] = [
    "transfer-encoding",
    "content-length",
    PROTECTED[0],
    PROTECTED[1],
    PROTECTED[2],
    PROTECTED[3],
];

/// An RFC 9110 `tchar`: what a header name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The options one `Connection` value lists: split at commas, trimmed, empty ones
/// skipped. The scan (`HopByHop::note`) and the strip read values through this alone.
fn connection_options(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// `close` and `keep-alive`: options about the connection itself, not header names.
fn is_persistence_option(option: &[u8]) -> bool {
    option.eq_ignore_ascii_case(b"close") || option.eq_ignore_ascii_case(b"keep-alive")
}

/// Header names the `Connection` header nominates, lower-cased (none when a value is
/// not visible ASCII). Allocates only when it names something beyond the usual
/// `keep-alive` / `close`.
fn connection_nominated(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for value in headers.get_all(CONNECTION) {
        value.to_str().ok()?;
        for option in connection_options(value).filter(|o| !is_persistence_option(o)) {
            out.push(String::from_utf8_lossy(option).to_ascii_lowercase());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// What the gateway reads from a request's headers, found in one pass over them. Each
/// lookup by name hashes the name and probes the map; the pass replaces the nine
/// lookups that admission, tracing and forwarding would make one by one.
#[derive(Debug, Default)]
pub struct RequestScan {
    pub hop_by_hop: HopByHop,
    /// The first `Content-Length`, parsed (`Some(None)` when it is not a number).
    pub content_length: Option<Option<u64>>,
    /// More than one `Content-Length` line, equal or not.
    pub content_length_repeated: bool,
    /// `Transfer-Encoding` is present; and whether every value of it is exactly `chunked`.
    pub transfer_encoding: bool,
    pub only_chunked: bool,
    /// More than one `Transfer-Encoding` line (their combined value names a coding
    /// twice, or one besides `chunked`).
    pub transfer_encoding_repeated: bool,
    /// `Host` lines.
    pub hosts: u8,
    /// The first `traceparent`, when valid.
    pub traceparent: Option<TraceParent>,
    pub tracestate: bool,
    /// The first `x-request-id`, when `sane_request_id` accepts it.
    pub request_id: Option<HeaderValue>,
}

impl RequestScan {
    pub fn of(headers: &HeaderMap) -> RequestScan {
        let mut scan = RequestScan {
            only_chunked: true,
            ..RequestScan::default()
        };
        let mut seen_traceparent = false;
        let mut seen_request_id = false;
        for (name, value) in headers {
            if scan.hop_by_hop.note(name, value) {
                continue;
            }
            if name == CONTENT_LENGTH {
                match scan.content_length {
                    None => scan.content_length = Some(parse_length(value)),
                    Some(_) => scan.content_length_repeated = true,
                }
            } else if name == HOST {
                scan.hosts = scan.hosts.saturating_add(1);
            } else if name == TRANSFER_ENCODING {
                scan.transfer_encoding_repeated |= scan.transfer_encoding;
                scan.transfer_encoding = true;
                scan.only_chunked &= value.as_bytes().eq_ignore_ascii_case(b"chunked");
            } else if name == TRACEPARENT {
                if !seen_traceparent {
                    seen_traceparent = true;
                    scan.traceparent = parse_traceparent(value.as_bytes());
                }
            } else if name == TRACESTATE {
                scan.tracestate = true;
            } else if name == X_REQUEST_ID && !seen_request_id {
                seen_request_id = true;
                if sane_request_id(value.as_bytes()) {
                    scan.request_id = Some(value.clone());
                }
            }
        }
        scan
    }
}

/// A `Content-Length` value as a number (`None` when it is not one).
pub fn parse_length(value: &HeaderValue) -> Option<u64> {
    std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
}

/// Is a client's `x-request-id` safe to reuse (length and characters)?
pub fn sane_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// Is this peer a trusted proxy whose `x-forwarded-for` may be believed?
pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&peer))
}

/// The client address: the peer itself, or, behind trusted proxies, the right-most
/// address in `x-forwarded-for` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let Some(text) = headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) else {
        return peer;
    };
    for part in text.rsplit(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) if !is_trusted(ip, trusted) => return ip,
            Ok(_) => continue,
            Err(_) => return peer,
        }
    }
    peer
}

thread_local! {
    /// The peer this thread served last and its address as a header value: a kept-alive
    /// client sends many requests, so most of them share one value (a reference count
    /// instead of formatting, validating and allocating it again).
    static PEER_VALUE: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
}

/// The peer's address as a header value.
fn peer_value(peer: IpAddr) -> HeaderValue {
    PEER_VALUE.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((ip, value)) = last.as_ref() {
            if *ip == peer {
                return value.clone();
            }
        }
        let value = HeaderValue::from_bytes(IpText::new(peer).as_bytes())
            .unwrap_or(HeaderValue::from_static("unknown"));
        *last = Some((peer, value.clone()));
        value
    })
}

/// The `x-forwarded-for` the upstream receives: appended to a trusted proxy's list,
/// replaced when the peer is not trusted (a client cannot forge its address).
pub fn forwarded_for(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> HeaderValue {
    let only_peer = || peer_value(peer);
    if !is_trusted(peer, trusted) {
        return only_peer();
    }
    let previous: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if previous.is_empty() {
        return only_peer();
    }
    let joined = format!("{}, {}", previous.join(", "), IpText::new(peer).as_str());
    HeaderValue::from_str(&joined).unwrap_or_else(|_| only_peer())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn strips_nominated_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        HopByHop::of(&h).strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_options_that_are_refused() {
        let scan = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, HeaderValue::from_static(value));
            HopByHop::of(&h)
        };
        for fine in [
            "keep-alive",
            "close",
            "Keep-Alive, x-hop",
            "a,b,c,d,e,f,g,h,i,j",
        ] {
            assert_eq!(scan(fine).connection_problem(), None, "{fine}");
        }
        for refused in [
            "Host",
            "close, x-forwarded-proto",
            "\"x-a\"",
            "a,b,c,d,e,f,g,h,i,j,k",
        ] {
            assert!(scan(refused).connection_problem().is_some(), "{refused}");
        }
        assert!(scan("keep-alive, Close").connection_close());
        assert!(!scan("keep-alive").connection_close());
    }

    #[test]
    fn forwarded_for_trust() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        assert_eq!(
            forwarded_for(&h, "127.0.0.1".parse().unwrap(), &trusted),
            "127.0.0.1"
        );
        assert_eq!(
            forwarded_for(&h, "10.1.1.1".parse().unwrap(), &trusted),
            "1.2.3.4, 10.1.1.1"
        );
        assert_eq!(
            forwarded_for(&HeaderMap::new(), "::1".parse().unwrap(), &trusted),
            "::1"
        );
    }

    #[test]
    fn client_ip_behind_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("9.9.9.9, 1.2.3.4, 10.0.0.2"),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let outsider: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(outsider, &h, &trusted), outsider);
    }

    #[test]
    fn edits_keep_targets_and_reason_phrases() {
        for target in [
            &b"/v1/items?limit=5"[..],
            b"http://agents.local/v1/x?y=1",
            b"/caf\xe9",
        ] {
            let mut req = RequestHeader::build("GET", target, None).unwrap();
            req.insert_header("X-Kept", "1").unwrap();
            edit_request(&mut req, |map| {
                map.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
            });
            assert_eq!(req.raw_path(), target);
            assert_eq!(req.headers.get(X_REQUEST_ID).unwrap(), "abc");
            assert_eq!(req.headers.get("x-kept").unwrap(), "1");
        }
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.set_reason_phrase(Some("Fine Thanks")).unwrap();
        edit_response(&mut resp, |map| {
            map.insert(SERVER_TIMING, HeaderValue::from_static("gateway;dur=1"));
        });
        assert_eq!(resp.get_reason_phrase(), Some("Fine Thanks"));
        assert_eq!(resp.headers.get(SERVER_TIMING).unwrap(), "gateway;dur=1");
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        assert!(String::from_utf8_lossy(&wire).contains("server-timing: gateway;dur=1\r\n"));
    }

    #[test]
    fn a_websocket_handshake_needs_both_headers() {
        let scan = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(*n, HeaderValue::from_static(v));
            }
            HopByHop::of(&h).websocket()
        };
        assert!(scan(&[("connection", "Upgrade"), ("upgrade", "websocket")]));
        assert!(scan(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "WebSocket")
        ]));
        assert!(!scan(&[("upgrade", "websocket")]));
        assert!(!scan(&[("connection", "upgrade"), ("upgrade", "h2c")]));
        assert!(!scan(&[("connection", "upgrade")]));
    }

    #[test]
    fn hop_by_hop_names_line_up() {
        assert_eq!(HOP_BY_HOP[CONNECTION_INDEX], CONNECTION);
        assert_eq!(HOP_BY_HOP[UPGRADE_INDEX], http::header::UPGRADE);
        assert_eq!(HOP_BY_HOP[TE_INDEX], http::header::TE);
        for (name, text) in HOP_BY_HOP.iter().zip(HOP_BY_HOP_TEXT) {
            assert_eq!(name.as_str(), text);
        }
        // RFC 9110 §7.6.1's hop-by-hop fields plus the legacy ones proxies strip, each
        // at a fixed place; any other field is end-to-end.
        let table: [(&str, Option<usize>); 13] = [
            ("connection", Some(0)),
            ("keep-alive", Some(1)),
            ("proxy-connection", Some(2)),
            ("proxy-authenticate", Some(3)),
            ("proxy-authorization", Some(4)),
            ("te", Some(5)),
            ("upgrade", Some(6)),
            ("trailer", Some(7)),
            ("http2-settings", Some(8)),
            ("host", None),
            ("transfer-encoding", None),
            ("x-keep-alive", None),
            ("trailers", None),
        ];
        for (text, index) in table {
            let name = HeaderName::from_static(text);
            assert_eq!(hop_by_hop_index(&name), index, "{text}");
        }
    }

    #[test]
    fn request_id_sanity() {
        assert!(sane_request_id(b"abc-123_x.y"));
        assert!(!sane_request_id(b""));
        assert!(!sane_request_id(b"a b"));
        assert!(!sane_request_id(&[b'a'; 129]));
        assert!(!sane_request_id("é".as_bytes()));
    }
}
