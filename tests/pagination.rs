//! Pagination enforcement against a real backend that echoes the query it received and
//! returns bodies of a chosen size, fixed-length and chunked.

mod common;

use common::*;
use futures_util::StreamExt;

fn config(backend: &str, on_exceed: &str) -> String {
    format!(
        r#"[upstreams.u]
backends = ["{backend}"]

[[routes]]
name = "lists"
path_prefix = "/list"
upstream = "u"

[routes.pagination]
limit_param = "limit"
default_limit = 20
max_limit = 100
on_exceed = "{on_exceed}"
max_response_bytes = 1000

[[routes]]
name = "bytes"
path_prefix = "/bytes"
upstream = "u"

[routes.pagination]
max_response_bytes = 1000

[[routes]]
name = "chunked"
path_prefix = "/chunked"
upstream = "u"

[routes.pagination]
max_response_bytes = 1000

[[routes]]
name = "open"
path_prefix = "/echo"
upstream = "u"

[[routes]]
name = "pages"
path_prefix = "/pages"
upstream = "u"

[routes.pagination]
limit_param = "page_size"
default_limit = 5
max_limit = 10
"#
    )
}

async fn target_seen(gw: &Gateway, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let r = client().get(gw.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v: serde_json::Value = r.json().await.unwrap();
    let target = v["target"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string());
    (status, target, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_is_injected_and_other_parameters_kept_byte_for_byte() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &config(&b.addr.to_string(), "clamp"));
    let (status, target, _) = target_seen(&gw, "/list").await;
    assert_eq!((status, target.as_str()), (200, "/list?limit=20"));
    let (_, target, _) = target_seen(&gw, "/list?z=%2Fa%20b&a=1&cursor=x%3D%3D&empty=&flag").await;
    assert_eq!(
        target,
        "/list?z=%2Fa%20b&a=1&cursor=x%3D%3D&empty=&flag&limit=20"
    );
    // a limit within range passes untouched, wherever it stands
    let (_, target, h) = target_seen(&gw, "/list?cursor=abc&limit=7&b=2").await;
    assert_eq!(target, "/list?cursor=abc&limit=7&b=2");
    assert!(h.get("x-pagination-clamped").is_none());
    // the parameter name is configurable
    let (_, target, _) = target_seen(&gw, "/pages?x=1").await;
    assert_eq!(target, "/pages?x=1&page_size=5");
    let log = gw.wait_access_log(4);
    assert_eq!(log[0]["pagination"], "defaulted");
    assert!(log[2]["pagination"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_is_clamped_or_rejected() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &config(&b.addr.to_string(), "clamp"));
    let (status, target, headers) = target_seen(&gw, "/list?a=1&limit=500&b=2").await;
    assert_eq!(status, 200);
    assert_eq!(target, "/list?a=1&limit=100&b=2");
    assert_eq!(headers["x-pagination-clamped"], "500->100");
    drop(gw);

    let gw = Gateway::start("", &config(&b.addr.to_string(), "reject"));
    // Health checks reach the agent too: count only the list requests.
    let lists = || {
        b.targets()
            .iter()
            .filter(|t| t.starts_with("/list"))
            .count()
    };
    let before = lists();
    let r = client()
        .get(gw.url("/list?limit=101"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_pagination");
    assert!(v["error"]["message"].as_str().unwrap().contains("1 to 100"));
    assert_eq!(
        lists(),
        before,
        "a rejected request never reaches the agent"
    );
    let m = parse_metrics(
        &gw.metrics_text_when(
            "agentgate_pagination_enforced_total",
            &[("route", "lists"), ("action", "rejected")],
            1.0,
        )
        .await,
    );
    assert_eq!(
        metric_value(
            &m,
            "agentgate_pagination_enforced_total",
            &[("route", "lists"), ("action", "rejected")]
        ),
        1.0
    );
    let log = gw.wait_access_log(1);
    assert_eq!(log[0]["pagination"], "rejected");
    assert_eq!(log[0]["error"], "invalid_pagination");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_limits_are_400() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &config(&b.addr.to_string(), "clamp"));
    let c = client();
    for q in [
        "limit=0",
        "limit=-1",
        "limit=1e3",
        "limit=abc",
        "limit=",
        "limit",
        "limit=5&limit=6",
        "limit=99999999999999999999999",
        "limit=%2B5",
        "limit=1.5",
    ] {
        let r = c.get(gw.url(&format!("/list?{q}"))).send().await.unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_pagination", "{q}");
    }
    assert_eq!(
        b.targets()
            .iter()
            .filter(|t| t.starts_with("/list"))
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_routes_and_methods_are_untouched() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &config(&b.addr.to_string(), "reject"));
    let (_, target, _) = target_seen(&gw, "/echo?limit=100000").await;
    assert_eq!(target, "/echo?limit=100000");
    let r = client()
        .post(gw.url("/list?limit=100000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["target"], "/list?limit=100000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_fixed_length_response_is_502() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &config(&b.addr.to_string(), "clamp"));
    let c = client();
    let r = c.get(gw.url("/bytes/1000")).send().await.unwrap();
    assert_eq!(r.status(), 200, "at the cap passes");
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    let r = c.get(gw.url("/bytes/1001")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_response_too_large");
    let m = parse_metrics(
        &gw.metrics_text_when(
            "agentgate_pagination_enforced_total",
            &[("route", "bytes"), ("action", "oversize")],
            1.0,
        )
        .await,
    );
    assert_eq!(
        metric_value(
            &m,
            "agentgate_pagination_enforced_total",
            &[("route", "bytes"), ("action", "oversize")]
        ),
        1.0
    );
    let log = gw.wait_access_log(2);
    assert_eq!(log[1]["pagination"], "oversize");
    assert_eq!(log[1]["status"], 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_chunked_response_is_cut_at_the_cap() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &config(&b.addr.to_string(), "clamp"));
    let c = client();
    // under the cap: complete and untouched
    let r = c.get(gw.url("/chunked/900/3/10")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 900);
    // over the cap: the client gets at most the cap, then a broken stream
    let r = c.get(gw.url("/chunked/3000/6/20")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut received = 0;
    let mut broke = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => received += b.len(),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    assert!(broke, "an oversize stream must not end as if complete");
    assert!((500..=1000).contains(&received), "received {received}");
    let log = gw.wait_access_log(2);
    assert_eq!(log[1]["pagination"], "oversize");
    assert_eq!(log[1]["error"], "upstream_response_too_large");
}
