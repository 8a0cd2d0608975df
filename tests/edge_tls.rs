//! The listener's edge protocols against real clients: TLS with throwaway certificates
//! (HTTP/1.1 and, by ALPN, HTTP/2), cleartext HTTP/2 by prior knowledge, certificates
//! re-read on reload, bad certificate files as located errors, failed handshakes
//! counted.

mod common;

use std::path::Path;
use std::time::Duration;

use common::tls::{loopback, Ca};
use common::*;

fn upstream(b: &Backend) -> String {
    format!(
        "[upstreams.u]\nbackends = [\"{}\"]\n[upstreams.u.health]\npath = \"\"\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        b.addr
    )
}

fn tls_server(cert: &Path, key: &Path) -> String {
    format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// A client that trusts only `ca` (never the system roots).
fn https_client(ca: &Ca) -> reqwest::ClientBuilder {
    let root = reqwest::Certificate::from_pem(&ca.cert.to_pem().unwrap()).unwrap();
    reqwest::Client::builder()
        .use_native_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .timeout(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_http2_by_alpn_through_the_same_phases() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let leaf = ca.leaf(certs.path(), "gw", &["localhost"], &[loopback()]);
    let b = Backend::start("b").await;
    let gw = Gateway::start(&tls_server(&leaf.cert_file, &leaf.key_file), &upstream(&b));
    let url = format!("https://{}/echo?x=1", gw.listen);

    let h2 = https_client(&ca).build().unwrap();
    let r = h2.get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN chose h2");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let echoed: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echoed["target"], "/echo?x=1");
    assert_eq!(
        echoed["headers"]["x-forwarded-proto"], "https",
        "the agent learns the client used TLS"
    );

    let h1 = https_client(&ca).http1_only().build().unwrap();
    let r = h1.get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);

    // Another path, HTTP/2 again: the same route, log and metrics for every protocol.
    let r = h2
        .get(format!("https://{}/nothing-here", gw.listen))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the catch-all route serves it");
    let lines = gw.access_log_lines(3);
    let protocols: Vec<&str> = lines
        .iter()
        .map(|l| l["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(
        protocols.iter().filter(|p| **p == "HTTP/2").count(),
        2,
        "{protocols:?}"
    );
    assert_eq!(
        protocols.iter().filter(|p| **p == "HTTP/1.1").count(),
        1,
        "{protocols:?}"
    );
    for l in &lines {
        assert_eq!(l["route"], "all");
        assert_eq!(l["status"], 200);
    }
    let text = gw
        .metrics_text_when("agentgate_http_requests_total", &[("route", "all")], 3.0)
        .await;
    assert!(text.contains("agentgate_http_requests_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_gives_new_connections_the_new_certificate_and_keeps_open_ones() {
    let certs = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old ca");
    let leaf = old_ca.leaf(certs.path(), "gw", &["localhost"], &[loopback()]);
    let b = Backend::start("b").await;
    let gw = Gateway::start(&tls_server(&leaf.cert_file, &leaf.key_file), &upstream(&b));
    let url = format!("https://{}/echo", gw.listen);

    // An HTTP/2 connection opened before the reload.
    let before = https_client(&old_ca).build().unwrap();
    assert_eq!(before.get(&url).send().await.unwrap().status(), 200);

    // The files are replaced by a certificate from another CA, then reloaded.
    let new_ca = Ca::new("new ca");
    new_ca.leaf(certs.path(), "gw", &["localhost"], &[loopback()]);
    let v = gw.reload().await;
    assert_eq!(v["result"], "success", "{v}");

    let after = https_client(&new_ca).build().unwrap();
    assert_eq!(after.get(&url).send().await.unwrap().status(), 200);
    let stale = https_client(&old_ca).build().unwrap();
    assert!(
        stale.get(&url).send().await.is_err(),
        "a new connection is offered the new certificate only"
    );
    // The connection made before the reload is still served.
    for _ in 0..3 {
        assert_eq!(before.get(&url).send().await.unwrap().status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_at_reload_keeps_the_old_config_and_says_why() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let leaf = ca.leaf(certs.path(), "gw", &["localhost"], &[loopback()]);
    let b = Backend::start("b").await;
    let gw = Gateway::start(&tls_server(&leaf.cert_file, &leaf.key_file), &upstream(&b));
    let url = format!("https://{}/echo", gw.listen);

    // A key that is not the certificate's.
    let other = ca.leaf(certs.path(), "other", &["localhost"], &[loopback()]);
    std::fs::copy(&other.key_file, &leaf.key_file).unwrap();
    let v = gw.reload().await;
    assert_eq!(v["result"], "failure", "{v}");
    let errors = v.to_string();
    assert!(
        errors.contains("is not the key of the first certificate"),
        "{errors}"
    );
    assert!(
        errors.contains("agentgate.toml:"),
        "located in the config: {errors}"
    );
    // Still served with the certificate loaded before.
    let c = https_client(&ca).build().unwrap();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
}

#[test]
fn check_locates_a_missing_or_mismatched_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let leaf = ca.leaf(certs.path(), "gw", &["localhost"], &[loopback()]);
    let other = ca.leaf(certs.path(), "other", &[], &[loopback()]);
    let check = |tls: &str| {
        let path = certs.path().join("agentgate.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:18443\"\n{tls}\n[upstreams.u]\nbackends = [\"127.0.0.1:9\"]\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n"
        );
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentgate"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _) = check(&tls_server(&leaf.cert_file, &leaf.key_file));
    assert_eq!(code, Some(0));

    let (code, err) = check(&tls_server(
        &certs.path().join("missing.crt"),
        &leaf.key_file,
    ));
    assert_eq!(code, Some(2));
    // Line 4 is cert_file, its value starts at column 13.
    assert!(err.contains("agentgate.toml:4:13"), "{err}");
    assert!(err.contains("cannot read"), "{err}");

    let (code, err) = check(&tls_server(&leaf.cert_file, &other.key_file));
    assert_eq!(code, Some(2));
    assert!(err.contains("agentgate.toml:5:12"), "{err}");
    assert!(
        err.contains("is not the key of the first certificate"),
        "{err}"
    );

    let (code, err) = check(&format!(
        "{}min_version = \"1.1\"\n",
        tls_server(&leaf.cert_file, &leaf.key_file)
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("agentgate.toml:6:15"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_counted_and_not_logged_as_errors() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let leaf = ca.leaf(certs.path(), "gw", &["localhost"], &[loopback()]);
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        &format!(
            "header_timeout = \"1s\"\n{}",
            tls_server(&leaf.cert_file, &leaf.key_file)
        ),
        &upstream(&b),
    );
    // Cleartext HTTP to the TLS port, and a client that does not trust the certificate.
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(gw.listen).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(!buf[..n].starts_with(b"HTTP/"), "no cleartext answer");
    }
    let untrusting = https_client(&Ca::new("someone else")).build().unwrap();
    assert!(untrusting
        .get(format!("https://{}/echo", gw.listen))
        .send()
        .await
        .is_err());
    // A connection that never starts its handshake is closed at header_timeout.
    let idle = std::net::TcpStream::connect(gw.listen).unwrap();
    gw.metrics_text_when(
        "agentgate_tls_handshake_failures_total",
        &[("reason", "protocol")],
        4.0,
    )
    .await;
    gw.metrics_text_when(
        "agentgate_tls_handshake_failures_total",
        &[("reason", "timeout")],
        1.0,
    )
    .await;
    drop(idle);
    let log = gw.stderr();
    assert!(
        !log.lines()
            .any(|l| l.to_lowercase().contains("handshake") && l.contains("ERROR")),
        "{log}"
    );
    // Trusting clients are still served.
    let c = https_client(&ca).build().unwrap();
    assert_eq!(
        c.get(format!("https://{}/echo", gw.listen))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_serves_http2_by_prior_knowledge_beside_http1() {
    let rx = common::otlp::OtlpReceiver::start().await;
    let b = Backend::start("b").await;
    let trace = format!("[trace]\notlp_endpoint = \"{}\"\n", rx.endpoint());
    let gw = Gateway::start("h2c = true", &format!("{trace}{}", upstream(&b)));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let r = client().get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    let lines = gw.access_log_lines(2);
    assert_eq!(lines[0]["protocol"], "HTTP/2");
    assert_eq!(lines[1]["protocol"], "HTTP/1.1");
    let spans = wait_for(Duration::from_secs(10), "two server spans", || {
        let spans = rx.spans();
        async move { (spans.iter().filter(|s| s.span.kind == 2).count() >= 2).then_some(spans) }
    })
    .await;
    let mut versions: Vec<String> = spans
        .iter()
        .filter(|s| s.span.kind == 2)
        .filter_map(|s| s.attr("network.protocol.version"))
        .collect();
    versions.sort();
    assert_eq!(versions, ["1.1", "2"]);

    // Without h2c the HTTP/2 preface is not HTTP/1.1: refused.
    let b2 = Backend::start("b2").await;
    let plain = Gateway::start("", &upstream(&b2));
    let r = h2.get(plain.url("/echo")).send().await;
    assert!(r.is_err() || r.unwrap().status() == 400);
}
