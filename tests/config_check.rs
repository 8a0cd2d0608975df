//! `agentgate check` and `run`: every bad config is reported as PATH:LINE:COL with a
//! message that says what to fix, exit code 2.

mod common;

use std::process::Command;

use common::gateway::BIN;

const GOOD: &str = r#"[server]
listen = "127.0.0.1:18080"

[upstreams.agents]
backends = ["127.0.0.1:9001"]

[[routes]]
name = "all"
path_prefix = "/"
upstream = "agents"
"#;

fn check(text: &str) -> (i32, String, String) {
    with_config("check", text)
}

/// Runs `agentgate <command> --config FILE` on `text`; the file's path reads as PATH.
fn with_config(command: &str, text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args([command, "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "PATH");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

fn assert_error(text: &str, location: &str, needle: &str) {
    let (code, _, stderr) = check(text);
    assert_eq!(code, 2, "exit code for:\n{text}\nstderr: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("PATH:{location}: ")))
        .unwrap_or_else(|| panic!("no error at {location} in:\n{stderr}"));
    assert!(line.contains(needle), "{line:?} should mention {needle:?}");
}

#[test]
fn a_good_config_prints_ok_and_a_summary() {
    let (code, stdout, stderr) = check(GOOD);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("ok\n"));
    assert!(
        stdout.contains("1 routes, 1 upstreams (1 backends)"),
        "{stdout}"
    );
}

#[test]
fn the_shipped_configs_are_valid() {
    let mut paths = vec!["config/agentgate.toml".to_string()];
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples")).unwrap()
    {
        paths.push(format!(
            "config/examples/{}",
            entry.unwrap().file_name().to_string_lossy()
        ));
    }
    assert!(paths.len() >= 3);
    for path in &paths {
        let out = Command::new(BIN)
            .args(["check", "--config", path])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn unknown_key() {
    assert_error(
        &GOOD.replace("listen =", "lisen ="),
        "2:1",
        "unknown field `lisen`",
    );
}

#[test]
fn bad_duration() {
    let text = GOOD.replace(
        "backends = [\"127.0.0.1:9001\"]",
        "backends = [\"127.0.0.1:9001\"]\nconnect_timeout = \"10 sec\"",
    );
    assert_error(&text, "6:19", "invalid duration");
}

#[test]
fn an_https_collector_is_refused_with_the_way_out() {
    // Spans go over plain OTLP/HTTP: TLS belongs to a collector beside the gateway.
    let text =
        format!("{GOOD}\n[trace]\notlp_endpoint = \"https://collector.example:4318/v1/traces\"\n");
    assert_error(&text, "13:17", "not a plain http:// URL");
}

#[test]
fn route_naming_a_missing_upstream() {
    assert_error(
        &GOOD.replace("upstream = \"agents\"", "upstream = \"agnets\""),
        "10:12",
        "not defined",
    );
}

#[test]
fn empty_backends() {
    assert_error(
        &GOOD.replace("[\"127.0.0.1:9001\"]", "[]"),
        "5:12",
        "no backends",
    );
}

#[test]
fn max_limit_below_default_limit() {
    let text = format!("{GOOD}\n[routes.pagination]\ndefault_limit = 50\nmax_limit = 10\n");
    assert_error(
        &text,
        "14:13",
        "max_limit (10) must be at least default_limit (50)",
    );
}

#[test]
fn duplicate_route_names() {
    let text = format!(
        "{GOOD}\n[[routes]]\nname = \"all\"\npath_prefix = \"/x\"\nupstream = \"agents\"\n"
    );
    assert_error(&text, "13:8", "duplicate route name");
}

#[test]
fn unparsable_addresses() {
    assert_error(
        &GOOD.replace("127.0.0.1:9001", "localhost:9001"),
        "5:13",
        "invalid address",
    );
    assert_error(
        &GOOD.replace("127.0.0.1:18080", "127.0.0.1:99999"),
        "2:10",
        "invalid address",
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = GOOD
        .replace("127.0.0.1:9001", "nope")
        .replace("upstream = \"agents\"", "upstream = \"ghost\"")
        .replace("path_prefix = \"/\"", "path_prefix = \"no-slash\"");
    let (code, _, stderr) = check(&text);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("PATH:")).count(),
        3,
        "{stderr}"
    );
}

#[test]
fn syntax_errors_are_located() {
    let (code, _, stderr) = check("[server\nlisten = 1\n");
    assert_eq!(code, 2);
    assert!(stderr.starts_with("PATH:1:"), "{stderr}");
}

#[test]
fn run_refuses_a_bad_config() {
    let (code, _, stderr) = with_config("run", &GOOD.replace("listen =", "lisen ="));
    assert_eq!(code, 2);
    assert!(stderr.contains(":2:1: unknown field"), "{stderr}");
}

#[test]
fn a_missing_file_is_named() {
    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/agentgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("/nonexistent/agentgate.toml:1:1: cannot read config file"));
}

#[test]
fn run_refuses_an_address_already_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let (code, _, stderr) = with_config(
        "run",
        &GOOD.replace("127.0.0.1:18080", &format!("127.0.0.1:{port}")),
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!("server.listen 127.0.0.1:{port} cannot be bound")),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refused at once, not after retries"
    );
}

#[test]
fn a_redis_url_the_client_cannot_use_is_located() {
    let text = format!("{GOOD}\n[rate_limit_store]\nredis_url = \"redis://127.0.0.1:notaport\"\n");
    // GOOD has 10 lines; a blank line and the section header follow.
    assert_error(&text, "13:13", "not a Redis URL");
    let (code, _, stderr) = check(&text.replace(":notaport", ":6379"));
    assert_eq!(code, 0, "{stderr}");
}
