//! Security: API keys per tenant, admin protection, request hygiene against raw
//! malformed and smuggling-shaped requests, body and header limits, and secrets that
//! must never reach a log line, a span or a metric.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::gateway::BIN;
use common::otlp::OtlpReceiver;
use common::raw::exchange;
use common::*;
use sha2::{Digest, Sha256};

fn keys_file(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(id, key)| {
            format!(
                "[[keys]]\nid = \"{id}\"\nsha256 = \"{}\"\n",
                hex::encode(Sha256::digest(key.as_bytes()))
            )
        })
        .collect()
}

fn auth_config(backend: &str) -> String {
    format!(
        r#"[upstreams.u]
backends = ["{backend}"]
[upstreams.u.health]
interval = "60s"
eject_after = 0

[[routes]]
name = "private"
path_prefix = "/private"
upstream = "u"
auth = true

[routes.rate_limit]
key = "api_key"
requests_per_second = 0.5
burst = 2

[[routes]]
name = "public"
path_prefix = "/"
upstream = "u"

[auth]
keys_file = "keys.toml"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_matrix() {
    let b = Backend::start("b").await;
    let keys = keys_file(&[
        ("tenant-a", "key-a-0123456789"),
        ("tenant-b", "key-b-0123456789"),
    ]);
    let gw = Gateway::start_with_files(
        "",
        &auth_config(&b.addr.to_string()),
        &[("keys.toml", &keys)],
    );
    let c = client();
    type Case<'a> = (&'a str, Option<(&'a str, &'a str)>, u16);
    let cases: [Case; 8] = [
        ("no key", None, 401),
        (
            "bearer a",
            Some(("authorization", "Bearer key-a-0123456789")),
            200,
        ),
        (
            "bearer lower-case scheme",
            Some(("authorization", "bearer key-b-0123456789")),
            200,
        ),
        ("x-api-key", Some(("x-api-key", "key-b-0123456789")), 200),
        (
            "unknown bearer",
            Some(("authorization", "Bearer key-c-0123456789")),
            401,
        ),
        ("unknown x-api-key", Some(("x-api-key", "nope")), 401),
        (
            "basic scheme",
            Some(("authorization", "Basic a2V5LWEtMDEyMzQ1Njc4OQ==")),
            401,
        ),
        ("empty bearer", Some(("authorization", "Bearer ")), 401),
    ];
    for (name, header, expected) in cases {
        let mut req = c.get(gw.url("/private/echo"));
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), expected, "{name}");
        if expected == 401 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "unauthorized", "{name}");
        }
    }
    assert_eq!(
        b.targets()
            .iter()
            .filter(|t| t.starts_with("/private"))
            .count(),
        3,
        "401s never reach the agent"
    );
    // public routes need no key
    assert_eq!(c.get(gw.url("/open")).send().await.unwrap().status(), 200);

    // the tenant, never the key, is what the log shows and what the limit counts
    let log = gw.wait_access_log(9);
    let tenants: Vec<&str> = log.iter().filter_map(|l| l["key_id"].as_str()).collect();
    assert!(tenants.contains(&"tenant-a") && tenants.contains(&"tenant-b"));
    let a = |c: reqwest::Client, url: String| async move {
        c.get(url)
            .header("x-api-key", "key-a-0123456789")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // Budgets are per tenant: tenant-a spent 1 of its burst of 2 above and tenant-b 2 of
    // its own, so tenant-a still has one request and tenant-b none.
    assert_eq!(a(c.clone(), gw.url("/private/x")).await, 200);
    assert_eq!(a(c.clone(), gw.url("/private/x")).await, 429);
    let r = c
        .get(gw.url("/private/x"))
        .header("authorization", "Bearer key-b-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);

    // the keys file reloads with the config
    let keys = keys_file(&[
        ("tenant-a", "key-a-0123456789"),
        ("tenant-c", "key-c-0123456789"),
    ]);
    std::fs::write(gw.path("keys.toml"), keys).unwrap();
    assert_eq!(gw.reload_as(None).await.0, 200);
    let r = c
        .get(gw.url("/private/echo"))
        .header("authorization", "Bearer key-c-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a key added to the keys file works after reload"
    );
    let r = c
        .get(gw.url("/private/echo"))
        .header("authorization", "Bearer key-b-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a key removed from the keys file stops working"
    );
}

#[test]
fn keys_files_hold_hashes_only_and_keys_hash_prints_the_entry() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/keys.toml")).unwrap();
    assert!(
        !shipped.contains("demo-key-tenant-a"),
        "a clear key in the shipped keys file"
    );
    let mut child = std::process::Command::new(BIN)
        .args(["keys", "hash", "--id", "tenant-z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"my-secret-key\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        format!(
            "[[keys]]\nid = \"tenant-z\"\nsha256 = \"{}\"\n",
            hex::encode(Sha256::digest(b"my-secret-key"))
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_matrix_and_redacted_config() {
    let b = Backend::start("b").await;
    let keys = keys_file(&[("tenant-a", "key-a-0123456789")]);
    let body = format!(
        "{}\n[rate_limit_store]\nredis_url = \"redis://agent:redis-pass-42@127.0.0.1:1\"\n",
        auth_config(&b.addr.to_string())
    );
    let gw = Gateway::start_with_files(
        "admin_token = \"admin-token-99\"",
        &body,
        &[("keys.toml", &keys)],
    );
    let c = client();
    // The orchestrator's probes carry no secrets: always open.
    for probe in ["/healthz", "/readyz"] {
        let r = c.get(gw.admin_url(probe)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{probe} is always open");
    }
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/config"),
        ("GET", "/alerts"),
        ("POST", "/reload"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let none = c
            .request(m.clone(), gw.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 401, "{path} without a token");
        let wrong = c
            .request(m.clone(), gw.admin_url(path))
            .bearer_auth("admin-token-98")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let right = c
            .request(m, gw.admin_url(path))
            .bearer_auth("admin-token-99")
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path} with the token");
    }
    let config = c
        .get(gw.admin_url("/config"))
        .bearer_auth("admin-token-99")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!config.contains("admin-token-99"), "admin token in /config");
    assert!(
        !config.contains("redis-pass-42"),
        "redis password in /config"
    );
    assert!(
        !config.contains(&hex::encode(Sha256::digest(b"key-a-0123456789"))),
        "key hash in /config"
    );
    let v: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(v["server"]["admin_token"], "REDACTED");
    assert_eq!(
        v["rate_limit_store"]["redis_url"],
        "redis://agent:***@127.0.0.1:1"
    );
    assert_eq!(v["auth"]["key_ids"][0], "tenant-a");
}

#[test]
fn admin_listens_on_loopback_by_default() {
    // No admin_listen: the default, 127.0.0.1:9090, is bound and answers, and the
    // kernel's table of listening sockets shows it on loopback only.
    const ADMIN: ([u8; 4], u16) = ([127, 0, 0, 1], 9090);
    let listen = free_addr();
    let text = format!("[server]\nlisten = \"{listen}\"\n[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("admin 127.0.0.1:9090"));
    let mut child = Some(
        std::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let admin = std::net::SocketAddr::from(ADMIN);
    wait_until(
        Duration::from_secs(20),
        "the default admin listener",
        || common::gateway::http_get_ok(admin, "/healthz").then_some(()),
    );
    let listeners: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1)?.to_string();
            let state = f.nth(1)?;
            (state == "0A" && local.ends_with(&format!(":{:04X}", ADMIN.1))).then_some(local)
        })
        .collect();
    let v6 = std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    common::kill_child(&mut child);
    assert_eq!(listeners, vec![format!("0100007F:{:04X}", ADMIN.1)]);
    assert!(
        !v6.lines().any(|l| l
            .split_whitespace()
            .nth(1)
            .is_some_and(|a| a.ends_with(&format!(":{:04X}", ADMIN.1)))),
        "no IPv6 listener on the admin port"
    );
}

/// Sends raw bytes, returns the status of the first response (0 when none came back).
fn raw_status(addr: std::net::SocketAddr, request: &[u8]) -> (u16, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request);
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let status = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.get(9..12))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_smuggling_shaped_requests_are_refused() {
    let b = Backend::start("b").await;
    let cfg = format!(
        "[upstreams.u]\nbackends = [\"{}\"]\n[upstreams.u.health]\ninterval = \"60s\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        b.addr
    );
    let gw = Gateway::start("max_request_body_bytes = 1000", &cfg);
    let big_header = [
        b"GET /h HTTP/1.1\r\nHost: x\r\nX-Big: ".as_slice(),
        &vec![b'a'; 2_000_000],
        b"\r\n\r\n",
    ]
    .concat();
    let big_line = [
        b"GET /".as_slice(),
        &vec![b'a'; 2_000_000],
        b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    .concat();
    let many: Vec<u8> = [
        b"GET /m HTTP/1.1\r\nHost: x\r\n".to_vec(),
        (0..300)
            .flat_map(|i| format!("X-H{i}: v\r\n").into_bytes())
            .collect(),
        b"\r\n".to_vec(),
    ]
    .concat();
    let table: Vec<(&str, Vec<u8>, u16)> = vec![
        ("content-length with transfer-encoding", b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("differing content-lengths", b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(), 400),
        ("content-length list", b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!".to_vec(), 400),
        ("transfer-encoding not ending in chunked", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("transfer-encoding gzip then chunked", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("two transfer-encodings", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("two chunked transfer-encoding lines", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("identity then chunked on two lines", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("two identical content-lengths", b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi".to_vec(), 400),
        ("http/1.1 without host", b"GET /s HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("two hosts", b"GET /s HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".to_vec(), 400),
        ("http/1.0 with transfer-encoding", b"POST /s HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("negative content-length", b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), 400),
        ("non-numeric content-length", b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(), 400),
        ("space before colon", b"GET /s HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(), 400),
        ("obsolete line folding", b"GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(), 400),
        ("header without colon", b"GET /s HTTP/1.1\r\nHost x\r\n\r\n".to_vec(), 400),
        ("NUL in a header value", b"GET /s HTTP/1.1\r\nHost: x\r\nX-N: a\x00b\r\n\r\n".to_vec(), 400),
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("unknown protocol version", b"GET /s HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("bad chunk size", b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), 400),
        ("declared body over the limit", b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".to_vec(), 413),
        ("connection nominating host", b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: host\r\n\r\n".to_vec(), 400),
        ("connection nominating x-forwarded-for", b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Forwarded-For\r\n\r\n".to_vec(), 400),
        ("connection nominating a quoted name", b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: \"x-a\"\r\n\r\n".to_vec(), 400),
        ("connection listing eleven options", b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: a,b,c,d,e,f,g,h,i,j,k\r\n\r\n".to_vec(), 400),
        ("2 MB header", big_header, 400),
        ("2 MB request line", big_line, 400),
        ("300 headers", many, 400),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(), 405),
    ];
    let mut ids = Vec::new();
    for (name, request, expected) in &table {
        let started = Instant::now();
        let responses = exchange(gw.listen, request, Duration::from_secs(3));
        let took = started.elapsed();
        let r = responses
            .first()
            .unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(r.status, *expected, "{name}");
        assert!(
            took < Duration::from_secs(3),
            "{name}: answered only after {took:?}"
        );
        // The gateway's own refusals, pingora's parser's included, are §3 errors.
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{name}: no x-request-id in {r:?}"));
        let body = r.json();
        assert_eq!(body["error"]["request_id"], id, "{name}");
        let code = match expected {
            413 => "payload_too_large",
            405 => "method_not_allowed",
            _ => "bad_request",
        };
        assert_eq!(body["error"]["code"], code, "{name}");
        assert_eq!(r.header("connection"), Some("close"), "{name}");
        assert!(
            r.header("server-timing")
                .is_some_and(|t| t.starts_with("gateway;dur=")),
            "{name}: no server-timing in {r:?}"
        );
        ids.push((*name, id.to_string()));
    }
    // Each refusal is an access log line under its request id, pingora's own included.
    let log = gw.wait_access_log(ids.len());
    for (name, id) in &ids {
        assert!(
            log.iter().any(|l| l["request_id"] == id.as_str()),
            "{name}: no access log line for {id}"
        );
    }
    let garbage = &ids
        .iter()
        .find(|(n, _)| *n == "garbage request line")
        .unwrap()
        .1;
    let line = log
        .iter()
        .find(|l| l["request_id"] == garbage.as_str())
        .unwrap();
    assert_eq!(
        (line["method"].as_str(), line["status"].as_u64()),
        (Some("-"), Some(400))
    );
    assert_eq!(
        (line["error"].as_str(), line["route"].as_str()),
        (Some("bad_request"), Some("unmatched"))
    );
    let reached: Vec<String> = b
        .targets()
        .into_iter()
        .filter(|t| t != "/healthz")
        .collect();
    assert!(
        reached.is_empty(),
        "malformed requests reached the agent: {reached:?}"
    );
    // and a well-formed one still does; HTTP/1.0 needs no Host
    let (status, _) = raw_status(gw.listen, b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    let (status, _) = raw_status(
        gw.listen,
        b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(status, 200);
    // a chunked body keeps its framing on the way to the agent, which reads it whole
    let (status, _) = raw_status(
        gw.listen,
        b"POST /chunked-ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(b.targets().contains(&"/chunked-ok".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_the_limit_is_413() {
    let b = Backend::start("b").await;
    let cfg = format!("[upstreams.u]\nbackends = [\"{}\"]\nretries = 0\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n", b.addr);
    let gw = Gateway::start("max_request_body_bytes = 1000", &cfg);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(vec![b'z'; 300])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = client()
        .post(gw.url("/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
    // under the limit, chunked, passes
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..3).map(|_| Ok(vec![b'z'; 300])).collect();
    let r = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!b.targets().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_header_is_dropped() {
    let b = Backend::start("b").await;
    let cfg = format!("[upstreams.u]\nbackends = [\"{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n", b.addr);
    let gw = Gateway::start("header_timeout = \"1s\"", &cfg);
    let addr = gw.listen;
    let silent = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        (n, started.elapsed())
    });
    // a trickle of one byte every 200 ms never completes a header either
    let trickle = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        for b in b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if s.write_all(&[*b]).is_err() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        started.elapsed()
    });
    let (n, took) = silent.await.unwrap();
    assert_eq!(n, 0, "closed without a response");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    let took = trickle.await.unwrap();
    assert!(
        took < Duration::from_millis(3500),
        "a trickling client was cut after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_forward_the_client_address() {
    let b = Backend::start("b").await;
    let cfg = format!("[upstreams.u]\nbackends = [\"{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n", b.addr);
    let gw = Gateway::start("trusted_proxies = [\"127.0.0.1/32\"]", &cfg);
    let v: serde_json::Value = client()
        .get(gw.url("/echo"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    let log = gw.wait_access_log(1);
    assert_eq!(log[0]["client_ip"], "203.0.113.7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_spans_or_metrics() {
    let rx = OtlpReceiver::start().await;
    let b = Backend::start("b").await;
    let keys = keys_file(&[("tenant-a", "SECRET-KEY-AAAA")]);
    let body = format!(
        "[trace]\notlp_endpoint = \"{}\"\n\n{}",
        rx.endpoint(),
        auth_config(&b.addr.to_string())
    );
    let gw = Gateway::start_with_files("", &body, &[("keys.toml", &keys)]);
    let c = client();
    let secrets = [
        "SECRET-KEY-AAAA",
        "SECRET-COOKIE-BBBB",
        "SECRET-APIKEY-CCCC",
        "SECRET-TOKEN-DDDD",
        "SECRET-QUERYKEY-EEEE",
        "SECRET-UNKNOWN-FFFF",
    ];
    let r = c
        .get(gw.url("/private/echo?token=SECRET-TOKEN-DDDD&api_key=SECRET-QUERYKEY-EEEE&page=2"))
        .header("authorization", "Bearer SECRET-KEY-AAAA")
        .header("cookie", "session=SECRET-COOKIE-BBBB")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(gw.url("/public?key=SECRET-TOKEN-DDDD"))
        .header("x-api-key", "SECRET-APIKEY-CCCC")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(gw.url("/private/x"))
        .header("authorization", "Bearer SECRET-UNKNOWN-FFFF")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(gw.url("/nowhere?token=SECRET-TOKEN-DDDD"))
        .header("authorization", "Bearer SECRET-KEY-AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the public catch-all route");

    let spans = wait_for(Duration::from_secs(10), "spans", || {
        let spans = rx.spans();
        async move { (spans.len() >= 7).then_some(spans) }
    })
    .await;
    let log = gw.wait_access_log(4);
    let metrics = c
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let config = c
        .get(gw.admin_url("/config"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let span_text = format!("{spans:?}");
    let access = serde_json::to_string(&log).unwrap();
    let stderr = gw.stderr();
    for s in secrets {
        assert!(!access.contains(s), "{s} in the access log");
        assert!(!stderr.contains(s), "{s} in the process log");
        assert!(!span_text.contains(s), "{s} in a span");
        assert!(!metrics.contains(s), "{s} in /metrics");
        assert!(!config.contains(s), "{s} in /config");
    }
    assert!(
        access.contains("token=REDACTED")
            && access.contains("api_key=REDACTED")
            && access.contains("key=REDACTED")
    );
    assert!(access.contains("page=2"), "other parameters are kept");
    assert!(span_text.contains("token=REDACTED"));
    assert!(access.contains("\"key_id\":\"tenant-a\""));
}

/// At `trace`, pingora prints whole request headers, targets and the raw bytes of
/// requests it cannot parse; none of the secrets in them may reach a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_process_log_at_trace_level() {
    let b = Backend::start("b").await;
    let keys = keys_file(&[("tenant-a", "SECRET-KEY-AAAA")]);
    let body = format!(
        "[log]\nlevel = \"trace\"\n\n{}",
        auth_config(&b.addr.to_string())
    );
    let gw = Gateway::start_with_files(
        "admin_token = \"SECRET-ADMIN-GGGG\"",
        &body,
        &[("keys.toml", &keys)],
    );
    let c = client();
    let r = c
        .get(gw.url("/private/echo?token=SECRET-TOKEN-DDDD&page=2"))
        .header("authorization", "Bearer SECRET-KEY-AAAA")
        .header("cookie", "session=SECRET-COOKIE-BBBB")
        .header("proxy-authorization", "Basic SECRET-PROXY-HHHH")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(gw.url("/public?api_key=SECRET-QUERYKEY-EEEE"))
        .header("x-api-key", "SECRET-APIKEY-CCCC")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Unparsable: pingora logs the raw request bytes.
    let (status, _) = raw_status(
        gw.listen,
        b"GET /x?token=SECRET-TOKEN-DDDD HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer SECRET-RAW-IIII\r\nX-Api-Key: SECRET-RAW-JJJJ\r\nX-N: a\x00b\r\n\r\n",
    );
    assert_eq!(status, 400);
    let r = c
        .get(gw.admin_url("/config"))
        .header("authorization", "Bearer SECRET-ADMIN-GGGG")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.wait_access_log(2);
    // pingora's own debug lines about the requests are there, so the check has teeth.
    let stderr = wait_until(Duration::from_secs(5), "pingora's trace lines", || {
        let text = gw.stderr();
        (text.contains("\"level\":\"trace\"")
            && text.contains("InvalidHTTPHeader")
            && text.contains("authorization\\\": \\\"REDACTED"))
        .then_some(text)
    });
    let stdout = std::fs::read_to_string(gw.path("stdout.log")).unwrap_or_default();
    for s in [
        "SECRET-KEY-AAAA",
        "SECRET-COOKIE-BBBB",
        "SECRET-APIKEY-CCCC",
        "SECRET-TOKEN-DDDD",
        "SECRET-QUERYKEY-EEEE",
        "SECRET-ADMIN-GGGG",
        "SECRET-PROXY-HHHH",
        "SECRET-RAW-IIII",
        "SECRET-RAW-JJJJ",
    ] {
        assert!(!stderr.contains(s), "{s} in the process log");
        assert!(!stdout.contains(s), "{s} on stdout");
    }
    assert!(
        stderr.contains("page=2"),
        "the rest of a target stays readable"
    );
}

/// Requests pipelined on one connection are each answered, in order (RFC 9112 §9.3.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let b = Backend::start("b").await;
    let cfg = format!(
        "[upstreams.u]\nbackends = [\"{}\"]\n[upstreams.u.health]\ninterval = \"60s\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        b.addr
    );
    let gw = Gateway::start("", &cfg);
    let pipelined = b"GET /echo/1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /echo/3 HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let responses = exchange(gw.listen, pipelined, Duration::from_secs(5));
    let targets: Vec<String> = responses
        .iter()
        .map(|r| r.json()["target"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(targets, ["/echo/1", "/echo/2", "/echo/3", "/echo/4"]);
    assert!(responses.iter().all(|r| r.status == 200));
    let ids: std::collections::HashSet<_> = responses
        .iter()
        .filter_map(|r| r.header("x-request-id"))
        .collect();
    assert_eq!(ids.len(), 4, "each response has its own request id");
}

/// A secret given as `${NAME}` is shown as its reference in /config, wherever it sits,
/// and never reaches the process log, even at `trace` through a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_from_the_environment_shows_as_its_reference() {
    let b = Backend::start("b").await;
    let secret = "s3cr3t-from-env-8842";
    let body = format!(
        "[log]\nlevel = \"trace\"\n[upstreams.u]\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n\n[alerting]\nwebhook_url = \"http://127.0.0.1:9/hook?key=${{AGENTGATE_TEST_HOOK_KEY}}\"\n",
        b.addr
    );
    let gw = Gateway::start_with_env(
        "admin_token = \"${AGENTGATE_TEST_ADMIN}\"",
        &body,
        &[
            ("AGENTGATE_TEST_HOOK_KEY", secret),
            ("AGENTGATE_TEST_ADMIN", "admin-token-from-env"),
        ],
    );
    let c = client();
    // The token from the environment is the admin token.
    let r = c.get(gw.admin_url("/config")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let config: serde_json::Value = c
        .get(gw.admin_url("/config"))
        .bearer_auth("admin-token-from-env")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        config["alerting"]["webhook_url"],
        "http://127.0.0.1:9/hook?key=${AGENTGATE_TEST_HOOK_KEY}"
    );
    let text = config.to_string();
    assert!(
        !text.contains(secret) && !text.contains("admin-token-from-env"),
        "{text}"
    );
    assert_eq!(gw.reload_as(Some("admin-token-from-env")).await.0, 200);
    assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);
    let log = gw.stderr();
    assert!(!log.contains(secret) && !log.contains("admin-token-from-env"));
}
