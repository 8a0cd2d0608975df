//! How the gateway speaks to agents, against real agents: TLS verified against a test
//! CA (by IP SAN for a backend by address, by `tls_server_name` otherwise), a refused
//! certificate as a 502 whose log says why, and gRPC over h2c and over TLS with ALPN
//! h2 (tonic's health service), trailers intact, streaming, and the gRPC health check.

mod common;

use std::time::Duration;

use common::grpc::{health_client, GrpcAgent};
use common::tls::{acceptor, loopback, Ca};
use common::*;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::ServingStatus;

fn upstream(backend: std::net::SocketAddr, extra: &str, health: &str) -> String {
    format!(
        "[upstreams.u]\nbackends = [\"{backend}\"]\nretries = 0\n{extra}\n[upstreams.u.health]\n{health}\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"u\"\n"
    )
}

const NO_CHECKS: &str = "path = \"\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_an_agent_by_address_checks_the_certificate_ip_san() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("agents ca");
    let ca_file = ca.write(certs.path(), "ca.pem");
    let good = ca.leaf(certs.path(), "good", &["agent.internal"], &[loopback()]);
    let named_only = ca.leaf(certs.path(), "named", &["agent.internal"], &[]);
    let by_ip = Backend::start_tls("by-ip", acceptor(&good, b"\x08http/1.1")).await;
    let by_name = Backend::start_tls("by-name", acceptor(&named_only, b"\x08http/1.1")).await;
    let tls = format!("tls = true\nca_file = \"{}\"", ca_file.display());

    let gw = Gateway::start("", &upstream(by_ip.addr, &tls, NO_CHECKS));
    let r = client().get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backend"], "by-ip");
    assert_eq!(by_ip.requests(), 1);

    // A certificate that does not name the address is refused...
    let gw = Gateway::start("", &upstream(by_name.addr, &tls, NO_CHECKS));
    let r = client().get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    gw.wait_stderr("does not name 127.0.0.1");
    assert_eq!(by_name.requests(), 0, "nothing was sent to it");

    // ...and accepted for the name it carries.
    let named = format!("{tls}\ntls_server_name = \"agent.internal\"");
    let gw = Gateway::start("", &upstream(by_name.addr, &named, NO_CHECKS));
    let r = client().get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(by_name.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_agent_certificate_is_a_502_whose_log_says_why() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("agents ca");
    let leaf = ca.leaf(certs.path(), "agent", &[], &[loopback()]);
    let agent = Backend::start_tls("agent", acceptor(&leaf, b"\x08http/1.1")).await;
    let other_ca = Ca::new("someone else").write(certs.path(), "other.pem");
    let gw = Gateway::start(
        "",
        &upstream(
            agent.addr,
            &format!("tls = true\nca_file = \"{}\"", other_ca.display()),
            NO_CHECKS,
        ),
    );
    let r = client().get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    let log = gw.wait_stderr("certificate verify failed");
    assert!(log.contains(&agent.addr.to_string()), "{log}");
    let line = gw.access_log_lines(1).remove(0);
    assert_eq!(line["error"], "upstream_unavailable");
    assert_eq!(agent.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_passes_status_trailers_and_streams() {
    let agent = GrpcAgent::start(None).await;
    let gw = Gateway::start(
        "h2c = true",
        &upstream(agent.addr, "protocol = \"h2c\"", NO_CHECKS),
    );
    let mut c = health_client(gw.listen).await;

    let r = c
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("unary call through the gateway");
    assert_eq!(r.into_inner().status, Wire::Serving as i32);

    // The agent's error travels in the trailers (grpc-status, grpc-message).
    let err = c
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // A server stream: the current status, then each change as the agent sends it.
    let mut watch = c
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, Wire::Serving as i32);
    agent
        .reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the change arrives through the gateway")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, Wire::NotServing as i32);
    drop(watch);

    let lines = gw.access_log_lines(2);
    assert_eq!(lines[0]["protocol"], "HTTP/2");
    assert_eq!(lines[0]["method"], "POST");
    assert_eq!(lines[0]["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_the_grpc_health_check() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("agents ca");
    let ca_file = ca.write(certs.path(), "ca.pem");
    let leaf = ca.leaf(certs.path(), "agent", &[], &[loopback()]);
    let agent = GrpcAgent::start(Some(acceptor(&leaf, b"\x02h2"))).await;
    let gw = Gateway::start(
        "h2c = true",
        &upstream(
            agent.addr,
            &format!("protocol = \"h2\"\nca_file = \"{}\"", ca_file.display()),
            // A check's timeout leaves room for a TLS handshake on a loaded machine.
            "grpc = true\ninterval = \"300ms\"\ntimeout = \"300ms\"\nunhealthy_after = 1\nhealthy_after = 1",
        ),
    );
    let healthy = [("upstream", "u")];
    gw.metrics_text_when("agentgate_upstream_backend_healthy", &healthy, 1.0)
        .await;
    let mut c = health_client(gw.listen).await;
    let r = c
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("unary call over TLS to the agent");
    assert_eq!(r.into_inner().status, Wire::Serving as i32);

    // The agent reports NOT_SERVING: the gRPC health check takes it out of service.
    agent
        .reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    wait_for(
        Duration::from_secs(5),
        "the backend to be taken out",
        || {
            let url = gw.url("/grpc.health.v1.Health/Check");
            async move {
                let r = client().post(url).send().await.ok()?;
                (r.status() == 503).then_some(())
            }
        },
    )
    .await;
    agent
        .reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    wait_for(Duration::from_secs(5), "the backend to be back", || {
        let mut c = c.clone();
        async move {
            c.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_trailers_is_the_one_te_the_agent_receives() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &upstream(b.addr, "", NO_CHECKS));
    let c = client();
    let r = c
        .get(gw.url("/echo"))
        .header("te", "deflate, trailers")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        b.last_headers().get("te").map(String::as_str),
        Some("trailers")
    );
    c.get(gw.url("/echo"))
        .header("te", "deflate")
        .send()
        .await
        .unwrap();
    assert_eq!(b.last_headers().get("te"), None);
}
