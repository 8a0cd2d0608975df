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

    fn spawned(addr: SocketAddr, password: Option<String>) -> Redis {
        let mut r = Redis {
            child: None,
            addr,
            dir: tempfile::tempdir().expect("tempdir"),
            password,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args([
                "--port",
                &self.addr.port().to_string(),
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
