//! Backends by name (SPEC 7.2), resolved by the system resolver from a hosts file the
//! test controls (the gateway runs in a mount namespace of its own where that file is
//! /etc/hosts): every address is a backend of its own; a name that moves drains the
//! address it left and serves the new one after a good check; a failed lookup keeps the
//! last addresses and is counted and logged once; `check --strict` refuses a name that
//! resolves to nothing.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;

fn config(port: u16, health: &str) -> String {
    format!(
        "[upstreams.u]\nbackends = [\"agents.test:{port}\"]\nresolve_interval = \"200ms\"\n[upstreams.u.health]\n{health}\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n"
    )
}

const CHECKS: &str =
    "interval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_after = 1\nhealthy_after = 1";

/// Which backends answered `n` requests.
async fn spread(gw: &Gateway, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = c.get(gw.url("/echo")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        *seen
            .entry(r.headers()["x-backend"].to_str().unwrap().to_string())
            .or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_of_a_name_is_a_backend_and_a_move_drains_the_old_one() {
    let v4 = Backend::start("v4").await;
    let port = v4.addr.port();
    let _v6 = Backend::start_on(
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        "v6",
        Default::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 agents.test\n::1 agents.test\n").unwrap();
    let gw = Gateway::start_with_hosts("", &config(port, CHECKS), &hosts);

    let seen = spread(&gw, 40).await;
    assert!(seen["v4"] > 0 && seen["v6"] > 0, "{seen:?}");
    let text = gw
        .metrics_text_when(
            "agentgate_upstream_requests_total",
            &[("backend", &format!("agents.test:{port}/::1"))],
            1.0,
        )
        .await;
    assert!(
        text.contains(&format!("backend=\"agents.test:{port}/127.0.0.1\"")),
        "{text}"
    );

    // A stream open on the IPv4 address while the name moves to IPv6 only.
    let c = client();
    let mut stream = None;
    for _ in 0..20 {
        let r = c.get(gw.url("/sse/10/100")).send().await.unwrap();
        if r.headers()["x-backend"] == "v4" {
            stream = Some(r);
            break;
        }
    }
    let stream = stream.expect("a stream on the IPv4 backend");
    std::fs::write(&hosts, "::1 agents.test\n").unwrap();
    gw.wait_stderr("now resolves to [[::1]");
    let body = stream.text().await.unwrap();
    assert_eq!(
        body.matches("data:").count(),
        10,
        "the drained address finished its stream: {body}"
    );
    wait_for(
        Duration::from_secs(5),
        "only the IPv6 address to serve",
        || async {
            let seen = spread(&gw, 10).await;
            (!seen.contains_key("v4")).then_some(())
        },
    )
    .await;

    // The name comes back to IPv4: the new address is checked before it gets traffic.
    v4.set_health_status(503);
    std::fs::write(&hosts, "127.0.0.1 agents.test\n::1 agents.test\n").unwrap();
    gw.wait_stderr("now resolves to [127.0.0.1");
    let seen = spread(&gw, 20).await;
    assert!(
        !seen.contains_key("v4"),
        "an unchecked address got traffic: {seen:?}"
    );
    v4.set_health_status(0);
    wait_for(
        Duration::from_secs(5),
        "the new address to pass its check and serve",
        || async {
            let seen = spread(&gw, 20).await;
            seen.contains_key("v4").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_keeps_the_last_addresses_counted_and_logged_once() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 agents.test\n").unwrap();
    let gw = Gateway::start_with_hosts("", &config(b.addr.port(), "path = \"\""), &hosts);
    assert_eq!(spread(&gw, 5).await["b"], 5);

    std::fs::write(&hosts, "# agents.test is gone\n").unwrap();
    gw.metrics_text_when(
        "agentgate_upstream_resolve_failures_total",
        &[("upstream", "u")],
        3.0,
    )
    .await;
    // Still served on the last addresses.
    assert_eq!(spread(&gw, 5).await["b"], 5);
    let log = gw.stderr();
    assert_eq!(log.matches("does not resolve").count(), 1, "{log}");

    std::fs::write(&hosts, "127.0.0.1 agents.test\n").unwrap();
    gw.wait_stderr("resolves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_nothing_at_start_waits_and_check_strict_refuses_it() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "# empty for now\n").unwrap();
    let gw = Gateway::start_with_hosts("", &config(b.addr.port(), "path = \"\""), &hosts);
    // Up, answering the JSON 503 until the name resolves.
    let r = client().get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    std::fs::write(&hosts, "127.0.0.1 agents.test\n").unwrap();
    wait_for(
        Duration::from_secs(5),
        "the name to resolve and serve",
        || async {
            let r = client().get(gw.url("/echo")).send().await.ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;

    let path = dir.path().join("strict.toml");
    std::fs::write(
        &path,
        config(9, "").replace("agents.test", "no-such-host.invalid"),
    )
    .unwrap();
    let check = |strict: bool| {
        let mut c = std::process::Command::new(common::gateway::BIN);
        c.arg("check");
        if strict {
            c.arg("--strict");
        }
        c.arg("--config").arg(&path).output().unwrap()
    };
    assert!(
        check(false).status.success(),
        "without --strict a name is not looked up"
    );
    let out = check(true);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("strict.toml:2:13: backend no-such-host.invalid:9 does not resolve"),
        "{err}"
    );
    // localhost resolves everywhere.
    std::fs::write(&path, config(9, "").replace("agents.test", "localhost")).unwrap();
    let out = check(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
