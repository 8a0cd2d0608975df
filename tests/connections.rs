//! `[server] max_connections` (SPEC §7.1): past the cap a new downstream connection is
//! closed at once and counted; the connections already open keep being served, and a
//! closed one frees its place.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::raw::parse_responses;
use common::*;

/// One keep-alive request on `s`; the status of its response (`None` when the
/// connection was closed or nothing complete came back in time).
fn request(s: &mut TcpStream) -> Option<u16> {
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(r) = parse_responses(&buf).first() {
                    return Some(r.status);
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_ones_are_refused_and_open_ones_served() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        "max_connections = 2",
        &format!(
            "[upstreams.u]\nbackends = [\"{}\"]\n\n[upstreams.u.health]\ninterval = \"60s\"\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
            b.addr
        ),
    );
    let listen = gw.listen;
    let (first, second) = tokio::task::spawn_blocking(move || {
        let mut first = TcpStream::connect(listen).unwrap();
        let mut second = TcpStream::connect(listen).unwrap();
        assert_eq!(request(&mut first), Some(200));
        assert_eq!(request(&mut second), Some(200));
        (first, second)
    })
    .await
    .unwrap();

    let (first, second) = tokio::task::spawn_blocking(move || {
        let (mut first, mut second) = (first, second);
        // The third is closed without an answer, at once.
        let mut third = TcpStream::connect(listen).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(request(&mut third), None, "a third connection is refused");
        assert!(started.elapsed() < Duration::from_secs(2));
        // The two open ones keep working.
        assert_eq!(request(&mut first), Some(200));
        assert_eq!(request(&mut second), Some(200));
        (first, second)
    })
    .await
    .unwrap();

    let m = gw.metrics().await;
    assert!(metric_value(&m, "agentgate_connections_refused_total", &[]) >= 1.0);
    assert_eq!(metric_value(&m, "agentgate_connections_open", &[]), 2.0);

    // A closed connection frees its place.
    drop(first);
    let mut second = second;
    let fresh = wait_until(Duration::from_secs(5), "a place to free up", || {
        let mut s = TcpStream::connect(listen).ok()?;
        (request(&mut s) == Some(200)).then_some(s)
    });
    assert_eq!(request(&mut second), Some(200));
    drop(fresh);
}
