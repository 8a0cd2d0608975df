//! The span exporter's connection to the collector: HTTP/1.1 POSTs over one kept-alive
//! TCP connection, written straight from the exporter's buffers.
//!
//! A general HTTP client handed the body over by value (a fresh megabyte of memory per
//! batch, page faults included) and ran its own runtime thread beside the exporter; on
//! a busy gateway both showed up in the profile next to the proxy threads. OTLP/HTTP
//! needs one request shape and a status line back, so this is all there is: connect
//! (with a timeout), write the request, read the status, headers and body, keep the
//! connection unless the collector closes it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::config::Endpoint;

/// A kept-alive connection to the collector.
pub struct Collector {
    endpoint: Endpoint,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
    head: Vec<u8>,
}

impl Collector {
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Collector {
        Collector {
            endpoint,
            timeout,
            conn: None,
            head: Vec::with_capacity(256),
        }
    }

    /// POSTs `parts` (written one after the other) as one protobuf body. A kept-alive
    /// connection the collector has closed meanwhile is retried once on a new one.
    pub fn post(&mut self, parts: &[&[u8]]) -> Result<(), String> {
        let reused = self.conn.is_some();
        match self.try_post(parts) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.conn = None;
                if reused && e.retry_on_fresh_connection {
                    self.try_post(parts).map_err(|e| {
                        self.conn = None;
                        e.message
                    })
                } else {
                    Err(e.message)
                }
            }
        }
    }

    fn try_post(&mut self, parts: &[&[u8]]) -> Result<(), PostError> {
        if self.conn.is_none() {
            self.conn = Some(BufReader::new(self.connect().map_err(PostError::fatal)?));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(PostError::fatal("no connection".to_string()));
        };
        let length: usize = parts.iter().map(|p| p.len()).sum();
        self.head.clear();
        let _ = write!(
            self.head,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {length}\r\n\r\n",
            self.endpoint.path, self.endpoint.authority
        );
        let stream = conn.get_mut();
        let written = stream
            .write_all(&self.head)
            .and_then(|()| parts.iter().try_for_each(|p| stream.write_all(p)));
        // A write that fails on a reused connection never reached a live collector.
        written.map_err(|e| PostError::retryable(format!("sending to the collector: {e}")))?;
        let (status, keep) = read_response(conn).map_err(|e| PostError {
            // Nothing at all came back: the kept-alive connection was already closed.
            retry_on_fresh_connection: e.kind() == io::ErrorKind::UnexpectedEof,
            message: format!("reading the collector's answer: {e}"),
        })?;
        if !keep {
            self.conn = None;
        }
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(PostError::fatal(format!("collector answered {status}")))
        }
    }

    fn connect(&self) -> Result<TcpStream, String> {
        let addrs: Vec<SocketAddr> = self
            .endpoint
            .authority
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", self.endpoint.authority))?
            .collect();
        let mut last = format!("{} resolved to no address", self.endpoint.authority);
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let _ = stream.set_read_timeout(Some(self.timeout));
                    let _ = stream.set_write_timeout(Some(self.timeout));
                    return Ok(stream);
                }
                Err(e) => last = format!("connecting to {addr}: {e}"),
            }
        }
        Err(last)
    }
}

struct PostError {
    retry_on_fresh_connection: bool,
    message: String,
}

impl PostError {
    fn fatal(message: String) -> PostError {
        PostError {
            retry_on_fresh_connection: false,
            message,
        }
    }
    fn retryable(message: String) -> PostError {
        PostError {
            retry_on_fresh_connection: true,
            message,
        }
    }
}

/// Largest response header or chunk-size line accepted from the collector.
const MAX_LINE: usize = 8 * 1024;

/// Reads one response: (status, whether the connection stays open). The body is read
/// and discarded (OTLP's partial-success details are not used).
fn read_response(conn: &mut BufReader<TcpStream>) -> io::Result<(u16, bool)> {
    let mut line = String::new();
    read_line(conn, &mut line)?;
    let mut words = line.split_ascii_whitespace();
    let version = words.next().unwrap_or("");
    let status: u16 = words.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {line:?}"),
        )
    })?;
    let mut keep = version == "HTTP/1.1";
    let mut length: Option<u64> = None;
    let mut chunked = false;
    loop {
        read_line(conn, &mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            keep = !value.eq_ignore_ascii_case("close");
        }
    }
    if chunked {
        loop {
            read_line(conn, &mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // trailers, then the empty line
                loop {
                    read_line(conn, &mut line)?;
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            discard(conn, size + 2)?;
        }
    } else if let Some(n) = length {
        discard(conn, n)?;
    } else if (200..=299).contains(&status) && status != 204 {
        // No length: the body ends with the connection.
        io::copy(conn, &mut io::sink())?;
        keep = false;
    }
    Ok((status, keep))
}

fn read_line(conn: &mut BufReader<TcpStream>, line: &mut String) -> io::Result<()> {
    line.clear();
    let n = conn.by_ref().take(MAX_LINE as u64).read_line(line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the collector closed the connection",
        ));
    }
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "header line too long",
        ));
    }
    Ok(())
}

fn discard(conn: &mut BufReader<TcpStream>, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut conn.by_ref().take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the collector's answer ended early",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A collector that answers each request with the next canned response, then
    /// closes when told to.
    fn collector(
        responses: Vec<&'static str>,
    ) -> (Endpoint, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            let mut responses = responses.into_iter().peekable();
            'accept: while let Ok((stream, _)) = listener.accept() {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    let mut length = 0usize;
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        continue 'accept;
                    }
                    loop {
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        if line.trim_end().is_empty() {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    bodies.push(body);
                    let Some(response) = responses.next() else {
                        break 'accept;
                    };
                    reader.get_mut().write_all(response.as_bytes()).unwrap();
                    if responses.peek().is_none() {
                        break 'accept;
                    }
                    if response.contains("Connection: close") {
                        continue 'accept;
                    }
                }
            }
            bodies
        });
        (
            Endpoint::parse(&format!("http://{addr}/v1/traces")).unwrap(),
            handle,
        )
    }

    #[test]
    fn posts_keep_the_connection_and_read_every_body_shape() {
        let (endpoint, collector) = collector(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ]);
        let mut c = Collector::new(endpoint, Duration::from_secs(5));
        assert_eq!(c.post(&[b"ab", b"cd"]), Ok(()));
        assert_eq!(c.post(&[b"x"]), Ok(()));
        assert_eq!(c.post(&[b"y"]), Err("collector answered 503".to_string()));
        assert_eq!(c.post(&[b"z"]), Ok(()));
        // the collector closed after the last answer: a new connection is made
        assert_eq!(c.post(&[b"last"]), Ok(()));
        drop(c);
        let bodies = collector.join().unwrap();
        assert_eq!(bodies[0], b"abcd");
        assert_eq!(bodies.last().unwrap(), b"last");
    }

    #[test]
    fn a_dead_collector_is_an_error_not_a_hang() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut c = Collector::new(
            Endpoint::parse(&format!("http://{addr}/v1/traces")).unwrap(),
            Duration::from_secs(1),
        );
        assert!(c.post(&[b"x"]).is_err());
    }
}
