//! `watch_config`: the gateway reloads by itself when its config file or a file it
//! names changes, including the Kubernetes ConfigMap swap; an invalid edit keeps the
//! old config and is counted and logged with its located errors.

mod common;

use std::time::Duration;

use common::*;

fn routes(b: &Backend, prefix: &str) -> String {
    format!(
        "[upstreams.u]\nbackends = [\"{}\"]\n[upstreams.u.health]\npath = \"\"\n\n[[routes]]\nname = \"r\"\npath_prefix = \"{prefix}\"\nupstream = \"u\"\n",
        b.addr
    )
}

/// Waits until `path` is answered with `status`.
async fn wait_status(gw: &Gateway, path: &str, status: u16, what: &str) {
    wait_for(Duration::from_secs(8), what, || {
        let url = gw.url(path);
        async move { (client().get(url).send().await.ok()?.status() == status).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_reloads_and_an_invalid_one_keeps_the_old_config() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("watch_config = true", &routes(&b, "/one"));
    gw.wait_stderr("watch_config: watching");
    assert_eq!(
        client().get(gw.url("/one")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client().get(gw.url("/two")).send().await.unwrap().status(),
        404
    );

    gw.rewrite_config(&gw.config_text().replace("\"/one\"", "\"/two\""));
    wait_status(&gw, "/two", 200, "the edited route to serve").await;
    assert_eq!(
        client().get(gw.url("/one")).send().await.unwrap().status(),
        404
    );
    gw.metrics_text_when(
        "agentgate_config_reloads_total",
        &[("result", "success")],
        1.0,
    )
    .await;

    // A broken edit: counted, logged with where it is wrong, the last good config serves.
    let good = gw.config_text();
    gw.rewrite_config(&good.replace("path_prefix = \"/two\"", "path_prefix = \"two\""));
    gw.metrics_text_when(
        "agentgate_config_reloads_total",
        &[("result", "failure")],
        1.0,
    )
    .await;
    let log = gw.wait_stderr("watch_config: the changed config is invalid");
    let line = log
        .lines()
        .find(|l| l.contains("the changed config is invalid"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(v["trigger"], "watch");
    assert!(
        v["errors"].as_str().unwrap().contains("agentgate.toml:"),
        "located errors as a field: {line}"
    );
    assert_eq!(
        client().get(gw.url("/two")).send().await.unwrap().status(),
        200
    );

    // The file is fixed again: it reloads again.
    gw.rewrite_config(&good.replace("\"/two\"", "\"/three\""));
    wait_status(&gw, "/three", 200, "the fixed config to serve").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_reloads() {
    let b = Backend::start("b").await;
    let gw = Gateway::start_configmap("watch_config = true", &routes(&b, "/one"));
    gw.wait_stderr("watch_config: watching");
    assert_eq!(
        client().get(gw.url("/one")).send().await.unwrap().status(),
        200
    );
    gw.swap_configmap(&gw.config_text().replace("\"/one\"", "\"/two\""));
    wait_status(&gw, "/two", 200, "the swapped ConfigMap to serve").await;
    gw.swap_configmap(&gw.config_text().replace("\"/two\"", "\"/three\""));
    wait_status(&gw, "/three", 200, "the second swap to serve").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_the_keys_file_reloads() {
    let b = Backend::start("b").await;
    let hash = |key: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    };
    let keys = format!("[[keys]]\nid = \"a\"\nsha256 = \"{}\"\n", hash("key-a-1"));
    let body = format!(
        "[auth]\nkeys_file = \"keys.toml\"\n{}auth = true\n",
        routes(&b, "/")
    );
    let gw = Gateway::start_with_files("watch_config = true", &body, &[("keys.toml", &keys)]);
    gw.wait_stderr("watch_config: watching");
    let with_key = |key: &'static str| {
        let url = gw.url("/x");
        async move {
            client()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(with_key("key-a-1").await, 200);
    assert_eq!(with_key("key-b-2").await, 401);
    std::fs::write(
        gw.path("keys.toml"),
        format!(
            "{keys}[[keys]]\nid = \"b\"\nsha256 = \"{}\"\n",
            hash("key-b-2")
        ),
    )
    .unwrap();
    wait_for(
        Duration::from_secs(8),
        "the new key to be accepted",
        || async { (with_key("key-b-2").await == 200).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_false_leaves_reloads_to_the_operator() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("watch_config = false", &routes(&b, "/one"));
    gw.rewrite_config(&gw.config_text().replace("\"/one\"", "\"/two\""));
    // The quiet period and more: nothing reloads by itself.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        client().get(gw.url("/two")).send().await.unwrap().status(),
        404
    );
    let v = gw.reload().await;
    assert_eq!(v["result"], "success");
    assert_eq!(
        client().get(gw.url("/two")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_config_keeps_serving_and_its_return_reloads() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("watch_config = true", &routes(&b, "/one"));
    gw.wait_stderr("watch_config: watching");
    let good = gw.config_text();
    std::fs::remove_file(&gw.config_path).unwrap();
    gw.metrics_text_when(
        "agentgate_config_reloads_total",
        &[("result", "failure")],
        1.0,
    )
    .await;
    gw.wait_stderr("cannot read config file");
    assert_eq!(
        client().get(gw.url("/one")).send().await.unwrap().status(),
        200
    );
    // A `${NAME}` in a key is no reference: the key is unknown, and said where.
    gw.rewrite_config(&good.replace("[[routes]]", "[[routes]]\n\"${NAME}\" = 1"));
    gw.metrics_text_when(
        "agentgate_config_reloads_total",
        &[("result", "failure")],
        2.0,
    )
    .await;
    gw.wait_stderr("unknown field `${NAME}`");
    gw.rewrite_config(&good.replace("\"/one\"", "\"/two\""));
    wait_status(&gw, "/two", 200, "the restored config to serve").await;
}
