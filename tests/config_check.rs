//! `agentgate check` and `run`: every bad config is reported as PATH:LINE:COL with a
//! message that says what to fix, exit code 2. The rules themselves are unit-tested
//! through the library (`src/config/validate/`); these tests hold the binary to its
//! output and exit codes.

mod common;

use std::process::Command;

use common::gateway::BIN;

/// The smallest good config (10 lines); tests vary it.
const GOOD: &str = include_str!("fixtures/good.toml");

fn check(text: &str) -> (i32, String, String) {
    with_config("check", text)
}

/// Runs `agentgate <command> --config FILE` on `text`; the file's path reads as PATH.
fn with_config(command: &str, text: &str) -> (i32, String, String) {
    with_config_env(command, text, &[])
}

fn with_config_env(command: &str, text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args([command, "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "PATH");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
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
fn every_error_is_reported_at_once() {
    // An unknown key and a wrong type in the file model, then three validation errors.
    let text = GOOD
        .replace("[server]\n", "[server]\nthreads = \"two\"\nbogus = 1\n")
        .replace("127.0.0.1:9001", "nope")
        .replace("upstream = \"agents\"", "upstream = \"ghost\"")
        .replace("path_prefix = \"/\"", "path_prefix = \"no-slash\"");
    let (code, _, stderr) = check(&text);
    assert_eq!(code, 2);
    let lines: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("PATH:"))
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(lines, ["2", "3", "7", "11", "12"], "{stderr}");
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
fn environment_references_are_expanded_and_an_unset_one_is_located() {
    let text = GOOD.replace(
        "[server]\n",
        "[server]\nadmin_token = \"${AGENTGATE_TEST_UNSET}\"\nthreads = 0\n",
    );
    let (code, _, stderr) = check(&text);
    assert_eq!(code, 2);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with("PATH:2:15: environment variable AGENTGATE_TEST_UNSET is not set"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("PATH:3:11: threads must be between"),
        "{stderr}"
    );

    // Set, or with a fallback: the file is good, and positions after it stay right.
    let (code, _, stderr) = with_config_env(
        "check",
        &text.replace("threads = 0", "threads = 2"),
        &[("AGENTGATE_TEST_UNSET", "tok-123456")],
    );
    assert_eq!(code, 0, "{stderr}");
    let fallback = GOOD.replace("127.0.0.1:9001", "127.0.0.1:${AGENTGATE_TEST_PORT:-9001}");
    let (code, _, stderr) = check(&fallback);
    assert_eq!(code, 0, "{stderr}");

    // An error that quotes a value from the environment shows the reference instead.
    let bad = GOOD.replace(
        "\"127.0.0.1:18080\"",
        "\"${AGENTGATE_TEST_LISTEN}\"\nthreads = 0",
    );
    let (code, _, stderr) = with_config_env(
        "check",
        &bad,
        &[("AGENTGATE_TEST_LISTEN", "hunter2-secret")],
    );
    assert_eq!(code, 2);
    assert!(!stderr.contains("hunter2-secret"), "{stderr}");
    assert!(
        stderr.contains("PATH:2:10: invalid address \"${AGENTGATE_TEST_LISTEN}\""),
        "{stderr}"
    );
    assert!(stderr.contains("PATH:3:11: threads"), "{stderr}");
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        text.trim(),
        format!(
            "agentgate {} (commit {expected})",
            env!("CARGO_PKG_VERSION")
        )
    );
}
