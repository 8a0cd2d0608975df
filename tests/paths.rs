//! The path the gateway decides on is the path the agent receives: dot segments in any
//! spelling, repeated slashes and encoded unreserved characters are normalised before
//! routing and auth; what cannot be normalised safely is refused with 400.

mod common;

use std::time::Duration;

use agentgate::proxy::path::normalize;
use common::raw::exchange;
use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use sha2::{Digest, Sha256};

fn config(backend: &str) -> String {
    format!(
        r#"[upstreams.u]
backends = ["{backend}"]
[upstreams.u.health]
interval = "60s"

[[routes]]
name = "private"
path_prefix = "/private"
upstream = "u"
auth = true

[[routes]]
name = "open"
path_prefix = "/open"
upstream = "u"

[auth]
keys_file = "keys.toml"
"#
    )
}

fn keys() -> String {
    format!(
        "[[keys]]\nid = \"t\"\nsha256 = \"{}\"\n",
        hex::encode(Sha256::digest(b"key-0123456789"))
    )
}

fn get(gw: &Gateway, target: &str, key: bool) -> common::raw::RawResponse {
    let auth = if key {
        "x-api-key: key-0123456789\r\n"
    } else {
        ""
    };
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    exchange(gw.listen, req.as_bytes(), Duration::from_secs(5))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no response to {target}"))
}

/// Spellings of `/open/../private/x` and its relatives that agents resolve to the
/// private route.
const BYPASSES: &[&str] = &[
    "/open/../private/x",
    "/open/%2e%2e/private/x",
    "/open/%2E%2E/private/x",
    "/open/.%2e/private/x",
    "/open/%2e./private/x",
    "/open/./../private/x",
    "/open//..//private/x",
    "/open/a/../../private/x",
    "/open/%2e%2e/%70rivate/x",
    "//private/x",
    "/./private/x",
    "/open/../../../private/x",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_reach_a_protected_route_without_a_key() {
    let b = Backend::start("b").await;
    let gw = Gateway::start_with_files("", &config(&b.addr.to_string()), &[("keys.toml", &keys())]);
    for target in BYPASSES {
        let r = get(&gw, target, false);
        assert_eq!(r.status, 401, "{target} without a key");
        assert_eq!(r.json()["error"]["code"], "unauthorized", "{target}");
        assert!(r.header("x-request-id").is_some());
    }
    assert!(
        b.targets().iter().all(|t| t == "/healthz"),
        "a bypass attempt reached the agent: {:?}",
        b.targets()
    );
    // With the key, the agent receives the path the gateway decided on, query intact.
    for target in BYPASSES {
        let with_query = format!("{target}?b=%2e%2e/&a=1&&c");
        assert_eq!(
            get(&gw, &with_query, true).status,
            200,
            "{target} with a key"
        );
    }
    let forwarded: Vec<String> = b
        .targets()
        .into_iter()
        .filter(|t| t != "/healthz")
        .collect();
    assert_eq!(forwarded.len(), BYPASSES.len());
    for t in &forwarded {
        assert_eq!(t, "/private/x?b=%2e%2e/&a=1&&c");
    }
    // An open route stays open in every spelling, and the agent sees the normal one.
    assert_eq!(get(&gw, "/open/./a/%2E/b/../c", false).status, 200);
    assert_eq!(b.targets().last().unwrap(), "/open/a/c");
    let log = gw.wait_access_log(2 * BYPASSES.len() + 1);
    assert!(
        log.iter().any(|l| l["path"] == "/open/a/c"),
        "the log shows the decided path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_cannot_be_normalised_safely_are_refused() {
    let b = Backend::start("b").await;
    let gw = Gateway::start_with_files("", &config(&b.addr.to_string()), &[("keys.toml", &keys())]);
    for target in [
        "/open/%2e%2e%2fprivate/x",
        "/open/..%2Fprivate/x",
        "/open/%2F..%2Fprivate",
        "/open/..%5Cprivate",
        "/open/..\\private",
        "/open/x%00",
        "/open/%zz",
        "/open/%",
        "/open/..;/private/x",
        "/open/.;/private/x",
    ] {
        for key in [false, true] {
            let r = get(&gw, target, key);
            assert_eq!(r.status, 400, "{target}");
            let body = r.json();
            assert_eq!(body["error"]["code"], "bad_request", "{target}");
            assert_eq!(
                body["error"]["request_id"].as_str(),
                r.header("x-request-id"),
                "{target}"
            );
        }
    }
    assert!(
        b.targets().iter().all(|t| t == "/healthz"),
        "{:?}",
        b.targets()
    );
}

/// The oracle for generated spellings is the WHATWG URL parser (the `url` crate), which
/// resolves `.`, `..` and their `%2e` spellings on its own; slashes are merged and
/// unreserved escapes decoded in the generated text before it is asked.
#[test]
fn generated_spellings_resolve_as_a_url_parser_resolves_them() {
    const PIECES: &[(&str, &str)] = &[
        ("a", "a"),
        ("private", "private"),
        ("open", "open"),
        (".", "."),
        ("..", ".."),
        ("%2e", "."),
        ("%2E", "."),
        ("%2e%2e", ".."),
        (".%2E", ".."),
        ("%2e.", ".."),
        ("%61", "a"),
        ("%7E", "~"),
        ("...", "..."),
        ("a.b", "a.b"),
        ("", ""),
    ];
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for _ in 0..20_000 {
        let n = rng.gen_range(1..8);
        let mut spelled = String::new();
        let mut plain = String::new();
        for _ in 0..n {
            let slashes = if rng.gen_bool(0.15) { "//" } else { "/" };
            let (s, p) = PIECES[rng.gen_range(0..PIECES.len())];
            spelled.push_str(slashes);
            spelled.push_str(s);
            plain.push('/');
            plain.push_str(p);
        }
        // Empty pieces stand for merged slashes in the oracle's input too.
        let mut merged = plain.clone();
        while merged.contains("//") {
            merged = merged.replace("//", "/");
        }
        let url = url::Url::parse(&format!("http://h{merged}")).unwrap();
        let expected = url.path();
        let got = normalize(spelled.as_bytes()).unwrap_or_else(|e| panic!("{spelled}: {e:?}"));
        assert_eq!(
            std::str::from_utf8(&got).unwrap(),
            expected,
            "{spelled} (the oracle read {merged})"
        );
    }
}
