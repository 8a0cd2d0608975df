//! Starting and stopping the real binary: the gateway and demo agents.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_addr, wait_until};

pub const BIN: &str = env!("CARGO_BIN_EXE_agentgate");

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

pub fn http_get_ok(addr: SocketAddr, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..10] == b"2")
}

/// A gateway started with `run --upgrade`; killed when dropped.
pub struct Successor {
    pub child: Child,
    pub log: PathBuf,
}

impl Successor {
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running gateway process with its own config, logs and ports.
pub struct Gateway {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    /// Environment variables the process gets besides the test's own.
    pub env: Vec<(String, String)>,
    /// A hosts file the process sees as /etc/hosts (a private mount namespace).
    pub hosts: Option<PathBuf>,
}

impl Gateway {
    /// Writes `[server]` with free ports plus `body` (everything but `[server]` keys, which
    /// go in `server_extra`) and starts the gateway; waits until the admin port answers.
    pub fn start(server_extra: &str, body: &str) -> Gateway {
        Self::start_with_files(server_extra, body, &[])
    }

    /// [`Gateway::start`] with environment variables for `${NAME}` in the config.
    pub fn start_with_env(server_extra: &str, body: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_full(server_extra, body, &[], env, false, None)
    }

    pub fn start_with_files(server_extra: &str, body: &str, files: &[(&str, &str)]) -> Gateway {
        Self::start_full(server_extra, body, files, &[], false, None)
    }

    /// [`Gateway::start`] with the config mounted as Kubernetes mounts a ConfigMap:
    /// `agentgate.toml -> ..data/agentgate.toml`, `..data -> ..1`; swap it with
    /// [`Gateway::swap_configmap`].
    pub fn start_configmap(server_extra: &str, body: &str) -> Gateway {
        Self::start_full(server_extra, body, &[], &[], true, None)
    }

    fn start_full(
        server_extra: &str,
        body: &str,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
        configmap: bool,
        hosts: Option<&Path>,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            fs::write(dir.path().join(name), content).expect("write file");
        }
        let listen = free_addr();
        let admin = free_addr();
        let access = format!(
            "access_log = \"{}\"",
            dir.path().join("access.log").display()
        );
        let body = if body.contains("[log]\n") {
            body.replacen("[log]\n", &format!("[log]\n{access}\n"), 1)
        } else {
            format!("[log]\n{access}\n{body}")
        };
        let mut defaults = String::new();
        if !server_extra.contains("threads") {
            defaults.push_str("threads = 1\n");
        }
        if !server_extra.contains("grace_period") {
            defaults.push_str("grace_period = \"1s\"\n");
        }
        // Tests rewrite configs and reload them themselves; the watch is tested on its own.
        if !server_extra.contains("watch_config") {
            defaults.push_str("watch_config = false\n");
        }
        let config = format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n{defaults}{server_extra}\n\n{body}\n"
        );
        let config_path = dir.path().join("agentgate.toml");
        if configmap {
            fs::create_dir(dir.path().join("..1")).expect("configmap version");
            fs::write(dir.path().join("..1/agentgate.toml"), config).expect("write config");
            std::os::unix::fs::symlink("..1", dir.path().join("..data")).expect("..data");
            std::os::unix::fs::symlink("..data/agentgate.toml", &config_path).expect("link");
        } else {
            fs::write(&config_path, config).expect("write config");
        }
        let mut gw = Gateway {
            child: None,
            dir,
            listen,
            admin,
            config_path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            hosts: hosts.map(Path::to_path_buf),
        };
        gw.spawn();
        gw
    }

    fn spawn(&mut self) {
        let stderr = fs::File::create(self.dir.path().join("stderr.log")).expect("stderr file");
        let stdout = fs::File::create(self.dir.path().join("stdout.log")).expect("stdout file");
        let mut command = match &self.hosts {
            None => Command::new(BIN),
            Some(hosts) => {
                let mut c = Command::new("unshare");
                c.args([
                    "-m",
                    "sh",
                    "-c",
                    "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
                ])
                .arg(hosts)
                .arg(BIN);
                c
            }
        };
        let child = command
            .args(["run", "--config"])
            .arg(&self.config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start agentgate");
        self.child = Some(child);
        let admin = self.admin;
        let listen = self.listen;
        let log = self.dir.path().join("stderr.log");
        let child = self.child.as_mut().expect("child");
        wait_until(Duration::from_secs(20), "the gateway to listen", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "gateway exited early with {status}: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            (http_get_ok(admin, "/healthz") && std::net::TcpStream::connect(listen).is_ok())
                .then_some(())
        });
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Rewrites the config file (same server section) for a reload.
    pub fn rewrite_config(&self, text: &str) {
        fs::write(&self.config_path, text).expect("rewrite config");
    }

    /// [`Gateway::start`] with `hosts` as the gateway's /etc/hosts: the system
    /// resolver answers the names a test writes there (and rewrites, in place). Needs
    /// root for the private mount namespace, as CI runs.
    pub fn start_with_hosts(server_extra: &str, body: &str, hosts: &Path) -> Gateway {
        Self::start_full(server_extra, body, &[], &[], false, Some(hosts))
    }

    /// Replaces the ConfigMap's contents as the kubelet does: a new version folder,
    /// then `..data` swapped to it by one rename.
    pub fn swap_configmap(&self, text: &str) {
        let d = self.dir.path();
        let version = (2..)
            .find(|n| !d.join(format!("..{n}")).exists())
            .expect("a free version");
        let folder = format!("..{version}");
        fs::create_dir(d.join(&folder)).expect("version folder");
        fs::write(d.join(&folder).join("agentgate.toml"), text).expect("write config");
        let _ = fs::remove_file(d.join("..data_tmp"));
        std::os::unix::fs::symlink(&folder, d.join("..data_tmp")).expect("..data_tmp");
        fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap ..data");
    }

    pub fn config_text(&self) -> String {
        fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// Scrapes and parses the admin listener's /metrics.
    pub async fn metrics(&self) -> Vec<(String, f64)> {
        let text = super::client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("read /metrics");
        super::parse_metrics(&text)
    }

    /// Scrapes /metrics until `name{labels}` reaches `at_least` and returns the text:
    /// a request is counted in pingora's logging phase, which runs after its response
    /// went out, so a scrape right after a response may not see it yet.
    pub async fn metrics_text_when(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
    ) -> String {
        super::wait_for(
            Duration::from_secs(10),
            &format!("{name} to reach {at_least}"),
            || async {
                let text = super::client()
                    .get(self.admin_url("/metrics"))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                (super::metric_value(&super::parse_metrics(&text), name, labels) >= at_least)
                    .then_some(text)
            },
        )
        .await
    }

    /// Access log lines parsed as JSON.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        read_json_lines(&self.path("access.log"))
    }

    /// The access log once it has at least `n` lines (they are written in batches).
    pub fn access_log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        wait_until(
            Duration::from_secs(5),
            &format!("{n} access log lines"),
            || {
                let lines = self.access_log();
                (lines.len() >= n).then_some(lines)
            },
        )
    }

    /// POST /reload and its JSON answer.
    pub async fn reload(&self) -> serde_json::Value {
        self.reload_as(None).await.1
    }

    /// POST /reload, with `token` as the bearer when given: the status and JSON answer.
    pub async fn reload_as(&self, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut post = super::client().post(self.admin_url("/reload"));
        if let Some(token) = token {
            post = post.bearer_auth(token);
        }
        let r = post.send().await.expect("POST /reload");
        let status = r.status().as_u16();
        let text = r.text().await.expect("reload answer");
        let answer = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, answer)
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }

    /// Waits until the process log (written in batches) contains `needle`; returns it.
    pub fn wait_stderr(&self, needle: &str) -> String {
        wait_until(
            Duration::from_secs(5),
            &format!("{needle:?} in the process log"),
            || {
                let text = self.stderr();
                text.contains(needle).then_some(text)
            },
        )
    }

    /// Starts a second gateway with `run --upgrade` on the same config: it waits for
    /// this one's listeners over `upgrade_sock` (hand them over with SIGQUIT).
    pub fn start_successor(&self) -> Successor {
        let stderr =
            fs::File::create(self.dir.path().join("successor.log")).expect("successor log");
        let child = Command::new(BIN)
            .args(["run", "--upgrade", "--config"])
            .arg(&self.config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the successor");
        Successor {
            child,
            log: self.dir.path().join("successor.log"),
        }
    }

    pub fn send_signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            signal(c, sig);
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = wait_until(timeout, "the gateway to exit", || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        status.code()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGINT);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the access log has at least `n` lines and returns them.
    pub fn wait_access_log(&self, n: usize) -> Vec<serde_json::Value> {
        wait_until(Duration::from_secs(10), "access log lines", || {
            let lines = self.access_log();
            (lines.len() >= n).then_some(lines)
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A demo agent process (`agentgate demo-agent`).
pub struct DemoAgent {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub name: String,
    token_delay: String,
    first_token_delay: String,
}

impl DemoAgent {
    pub fn start(name: &str, token_delay: &str) -> DemoAgent {
        Self::start_on(free_addr(), name, token_delay)
    }

    pub fn start_on(addr: SocketAddr, name: &str, token_delay: &str) -> DemoAgent {
        Self::start_llm_on(addr, name, token_delay, "0ms")
    }

    /// A demo agent whose LLM endpoints (chat completions, messages) wait
    /// `first_token_delay` before the first content token.
    pub fn start_llm(name: &str, token_delay: &str, first_token_delay: &str) -> DemoAgent {
        Self::start_llm_on(free_addr(), name, token_delay, first_token_delay)
    }

    fn start_llm_on(
        addr: SocketAddr,
        name: &str,
        token_delay: &str,
        first_token_delay: &str,
    ) -> DemoAgent {
        let mut a = DemoAgent {
            child: None,
            addr,
            name: name.to_string(),
            token_delay: token_delay.to_string(),
            first_token_delay: first_token_delay.to_string(),
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let child = Command::new(BIN)
            .args([
                "demo-agent",
                "--listen",
                &self.addr.to_string(),
                "--name",
                &self.name,
                "--token-delay",
                &self.token_delay,
                "--first-token-delay",
                &self.first_token_delay,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo agent");
        self.child = Some(child);
        let addr = self.addr;
        wait_until(Duration::from_secs(10), "the demo agent to listen", || {
            http_get_ok(addr, "/healthz").then_some(())
        });
    }

    /// Kills the agent at once (a crash, not a drain).
    pub fn kill(&mut self) {
        super::kill_child(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for DemoAgent {
    fn drop(&mut self) {
        self.kill();
    }
}
