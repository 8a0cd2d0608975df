//! An incremental `text/event-stream` parser (the WHATWG event-stream format): chunks
//! go in as they arrive, whole events come out, whatever the chunk boundaries (inside
//! a line, between CR and LF, inside a multi-line `data`). Lines end in LF, CRLF or CR;
//! `:` lines are comments; `data` lines join with LF; a blank line ends the event, and
//! an event without data is no event. The parser only reads: forwarding the chunk is
//! the proxy's, at once.
//!
//! Memory is bounded: a line or an event's data past `MAX_EVENT_BYTES` is dropped (the
//! event is skipped and counted in [`SseParser::oversized`]).

/// The largest event (data) or line kept; a longer one is skipped.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// One dispatched event: its `event` field (empty for the default `message`) and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub name: &'a [u8],
    pub data: &'a [u8],
}

#[derive(Debug, Default)]
pub struct SseParser {
    /// The line being read, when a chunk ended inside it.
    line: Vec<u8>,
    /// The event being gathered.
    data: Vec<u8>,
    name: Vec<u8>,
    has_data: bool,
    /// The last chunk ended in CR: a LF first in the next one ends no line.
    after_cr: bool,
    /// The line or event being read outgrew `MAX_EVENT_BYTES`.
    skipping: bool,
    /// Events skipped for size.
    pub oversized: u64,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Reads one chunk, calling `on_event` for every event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], on_event: &mut impl FnMut(Event<'_>)) {
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk.first() == Some(&b'\n') {
                chunk = &chunk[1..];
            }
        }
        while !chunk.is_empty() {
            let Some(end) = memchr::memchr2(b'\n', b'\r', chunk) else {
                self.keep_partial(chunk);
                return;
            };
            let rest_at = if chunk[end] == b'\r' {
                match chunk.get(end + 1) {
                    Some(b'\n') => end + 2,
                    Some(_) => end + 1,
                    None => {
                        self.after_cr = true;
                        end + 1
                    }
                }
            } else {
                end + 1
            };
            if self.line.is_empty() {
                self.line_done(&chunk[..end], on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                if !self.skipping {
                    line.extend_from_slice(&chunk[..end]);
                }
                self.line_done(&line, on_event);
                line.clear();
                self.line = line;
            }
            chunk = &chunk[rest_at..];
        }
    }

    fn keep_partial(&mut self, part: &[u8]) {
        if self.skipping {
            return;
        }
        if self.line.len() + part.len() > MAX_EVENT_BYTES {
            self.skip();
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn skip(&mut self) {
        if !self.skipping {
            self.oversized += 1;
        }
        self.skipping = true;
        self.line = Vec::new();
        self.data = Vec::new();
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(Event<'_>)) {
        if line.is_empty() {
            if self.has_data && !self.skipping {
                on_event(Event {
                    name: &self.name,
                    data: &self.data,
                });
            }
            self.data.clear();
            self.name.clear();
            self.has_data = false;
            self.skipping = false;
            return;
        }
        if self.skipping || line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                    self.skip();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(&value[..value.len().min(256)]);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |e: Event| {
                out.push((
                    String::from_utf8_lossy(e.name).into_owned(),
                    String::from_utf8_lossy(e.data).into_owned(),
                ))
            });
        }
        out
    }

    const STREAM: &[u8] = b": keep-alive\r\n\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: one\ndata:two\n\nretry: 5\nid: 3\n\ndata\n\ndata: cr\r\rdata: [DONE]\n\n";

    fn expected() -> Vec<(String, String)> {
        [
            ("message_start", "{\"a\":1}"),
            ("", "one\ntwo"),
            ("", ""),
            ("", "cr"),
            ("", "[DONE]"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn fields_comments_line_ends() {
        assert_eq!(events(&[STREAM]), expected());
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let got = events(&[&STREAM[..i], &STREAM[i..j], &STREAM[j..]]);
                assert_eq!(got, expected(), "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(events(&chunks), expected());
    }

    #[test]
    fn an_oversized_event_is_skipped_and_the_next_one_read() {
        let mut big = b"data: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_EVENT_BYTES + 10));
        big.extend_from_slice(b"\n\ndata: after\n\n");
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in big.chunks(4096) {
            p.feed(c, &mut |e: Event| out.push(e.data.to_vec()));
        }
        assert_eq!(out, vec![b"after".to_vec()]);
        assert_eq!(p.oversized, 1);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Events as a producer means them: a name (maybe none) and data lines.
    fn event() -> impl Strategy<Value = (String, Vec<String>)> {
        (
            prop_oneof![Just(String::new()), "[a-z_.]{1,12}"],
            prop::collection::vec("[ -~]{0,20}", 1..4),
        )
    }

    fn write(events: &[(String, Vec<String>)], ends: &[&str], comments: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut n = 0usize;
        let mut last = "";
        // Line ends vary from line to line; a CR is never followed by a LF of the next
        // end (that pair is one CRLF, as any reader must take it).
        let mut end = || {
            n += 1;
            let mut e = ends[n % ends.len()];
            if last == "\r" && e.starts_with('\n') {
                e = "\r";
            }
            last = e;
            e.as_bytes().to_vec()
        };
        for (name, lines) in events {
            if comments {
                out.extend_from_slice(b": keep-alive");
                out.extend(end());
            }
            if !name.is_empty() {
                out.extend_from_slice(format!("event: {name}").as_bytes());
                out.extend(end());
            }
            for l in lines {
                out.extend_from_slice(format!("data: {l}").as_bytes());
                out.extend(end());
            }
            out.extend(end());
        }
        out
    }

    proptest! {
        #[test]
        fn any_stream_split_anywhere_gives_back_its_events(
            events in prop::collection::vec(event(), 1..8),
            ends in prop::sample::subsequence(vec!["\n", "\r\n", "\r"], 1..=3),
            comments in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let bytes = write(&events, &ends, comments);
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            at.sort();
            let mut p = SseParser::new();
            let mut got = Vec::new();
            let mut from = 0;
            for cut in at.into_iter().chain([bytes.len()]) {
                p.feed(&bytes[from..cut], &mut |e: Event| {
                    got.push((String::from_utf8_lossy(e.name).into_owned(), String::from_utf8_lossy(e.data).into_owned()))
                });
                from = cut;
            }
            let want: Vec<(String, String)> = events.iter().map(|(n, l)| (n.clone(), l.join("\n"))).collect();
            prop_assert_eq!(got, want);
        }
    }
}
