//! A real redis-server started by a test on a free loopback port.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_addr, wait_until};

pub struct Redis {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    /// `requirepass`: clients must AUTH with it.
    password: Option<String>,
    /// Certificate and key: the server speaks TLS only.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_on(free_addr())
    }

    /// A Redis that refuses every client that does not AUTH with `password`.
    pub fn start_with_password(password: &str) -> Redis {
        Self::spawned(free_addr(), Some(password.to_string()))
    }

    pub fn start_on(addr: SocketAddr) -> Redis {
        Self::spawned(addr, None)
    }

    /// A Redis that speaks TLS only (no client certificates), with `password`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path, password: &str) -> Redis {
        let mut r = Redis {
            child: None,
            addr: free_addr(),
            dir: tempfile::tempdir().expect("tempdir"),
            password: Some(password.to_string()),
            tls: Some((cert.to_path_buf(), key.to_path_buf())),
        };
        r.spawn();
        r
    }

    fn spawned(addr: SocketAddr, password: Option<String>) -> Redis {
        let mut r = Redis {
            child: None,
            addr,
            dir: tempfile::tempdir().expect("tempdir"),
            password,
            tls: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let port = self.addr.port().to_string();
        let plain_port = if let Some((cert, key)) = &self.tls {
            command
                .args(["--tls-port", &port, "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key);
            "0"
        } else {
            &port
        };
        let child = command
            .args([
                "--port",
                plain_port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed? `make test` installs it)");
        self.child = Some(child);
        let addr = self.addr;
        if self.tls.is_some() {
            wait_until(
                Duration::from_secs(10),
                "redis to answer PING over TLS",
                || {
                    use std::io::{Read, Write};
                    let mut b =
                        openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).ok()?;
                    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
                    let tcp = std::net::TcpStream::connect(addr).ok()?;
                    tcp.set_read_timeout(Some(Duration::from_millis(500)))
                        .ok()?;
                    let mut s = b.build().connect("localhost", tcp).ok()?;
                    s.write_all(b"PING\r\n").ok()?;
                    let mut buf = [0u8; 7];
                    s.read_exact(&mut buf).ok()?;
                    buf.starts_with(b"-NOAUTH").then_some(())
                },
            );
            return;
        }
        wait_until(Duration::from_secs(10), "redis to answer PING", || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).ok()?;
            s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
            // A password-protected server answers "-NOAUTH ...": it is up all the same.
            s.write_all(b"PING\r\n").ok()?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).ok()?;
            (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH")).then_some(())
        });
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn kill(&mut self) {
        super::kill_child(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
