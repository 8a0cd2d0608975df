//! Zero-downtime binary upgrade: a second process started with `run --upgrade` takes
//! the listening sockets (proxy and admin) over `upgrade_sock` when the running one
//! gets SIGQUIT; the old one drains and exits, and no request fails across it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn body(b: &Backend) -> String {
    format!(
        "[upstreams.u]\nbackends = [\"{}\"]\n[upstreams.u.health]\npath = \"\"\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_hands_the_listeners_to_the_new_process_and_no_request_fails() {
    let b = Backend::start("b").await;
    let socks = tempfile::tempdir().unwrap();
    let sock = socks.path().join("upgrade.sock");
    let mut old = Gateway::start(&format!("upgrade_sock = \"{}\"", sock.display()), &body(&b));

    // Keep-alive clients, bounded in count and time, through the whole upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, url) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
            old.url("/echo"),
        );
        load.push(tokio::spawn(async move {
            let c = client();
            let deadline = Instant::now() + Duration::from_secs(40);
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("status {}", r.status());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("error {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    wait_until(Duration::from_secs(5), "load to start", || {
        (ok.load(Ordering::Relaxed) > 20).then_some(())
    });

    let new = old.start_successor();
    wait_until(
        Duration::from_secs(10),
        "the successor to wait for the sockets",
        || sock.exists().then_some(()),
    );
    old.send_signal(libc::SIGQUIT);
    let code = old.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "the old process drains and exits cleanly");
    old.wait_stderr("SIGQUIT: handing the listeners to the new process");

    // Only the successor serves now, on the same addresses.
    let served_before = b.requests();
    let after_exit = ok.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(10),
        "the successor to serve the load",
        || (ok.load(Ordering::Relaxed) > after_exit + 50).then_some(()),
    );
    let r = client().get(old.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the successor's admin listener answers");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(b.requests() > served_before);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across the upgrade ({} served); successor log:\n{}",
        ok.load(Ordering::Relaxed),
        new.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_without_an_upgrade_socket_is_ignored_and_said_so() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &body(&b));
    gw.send_signal(libc::SIGQUIT);
    gw.wait_stderr("SIGQUIT ignored");
    let r = client().get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn run_upgrade_without_an_upgrade_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentgate.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:9\"\n[upstreams.u]\nbackends = [\"127.0.0.1:9\"]\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentgate"))
        .args(["run", "--upgrade", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.upgrade_sock"), "{err}");
}
