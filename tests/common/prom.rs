//! Real Prometheus and Alertmanager servers (Debian packages) started by a test on free
//! loopback ports.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_addr, wait_until};

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        super::kill_child(&mut self.child);
    }
}

fn ready(addr: SocketAddr, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut buf = [0u8; 12];
    matches!(s.read_exact(&mut buf), Ok(())) && &buf[9..12] == b"200"
}

/// Prometheus scraping `targets` (job "agentgate") every second, loading `rules`.
pub fn prometheus(targets: &[SocketAddr], rules: &Path) -> Server {
    prometheus_with(targets, rules, &[])
}

/// [`prometheus`] with extra command-line flags (e.g. `--enable-feature=exemplar-storage`).
pub fn prometheus_with(targets: &[SocketAddr], rules: &Path, flags: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: agentgate\n    static_configs:\n      - targets: [{list}]\n",
        rules.display()
    );
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, config).expect("write prometheus.yml");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus (`make test` installs it)");
    let server = Server {
        child: Some(child),
        addr,
        _dir: dir,
    };
    wait_until(Duration::from_secs(30), "prometheus to be ready", || {
        ready(addr, "/-/ready").then_some(())
    });
    server
}

/// Alertmanager with one receiver that does nothing (the test reads its API).
pub fn alertmanager() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let cfg = dir.path().join("alertmanager.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: default\n  group_wait: 1s\nreceivers:\n  - name: default\n",
    )
    .expect("write config");
    let child = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus-alertmanager (`make test` installs it)");
    let server = Server {
        child: Some(child),
        addr,
        _dir: dir,
    };
    wait_until(Duration::from_secs(30), "alertmanager to be ready", || {
        ready(addr, "/-/ready").then_some(())
    });
    server
}
