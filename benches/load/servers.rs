//! The processes under measurement: `pcbridge ingress` / `pcbridge worker` (the release
//! binary Cargo built for this benchmark) and the reference servers. Killed on drop.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

pub struct Server {
    child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// When the process was spawned.
    pub spawned: Instant,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/readyz` every 2 ms; the time from spawn to the first 200.
    pub async fn ready(&self, limit: Duration) -> Duration {
        let admin = self.admin.expect("a pcbridge role has an admin listener");
        let http = reqwest::Client::new();
        let url = format!("http://{admin}/readyz");
        loop {
            if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return self.spawned.elapsed();
            }
            assert!(self.spawned.elapsed() < limit, "not ready within {limit:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

/// `pcbridge <role>` with `env` (PCBRIDGE_* variables) on free ports.
pub fn pcbridge(role: &str, env: &[(String, String)]) -> Server {
    let (addr, admin) = (free_addr(), free_addr());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pcbridge"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PCBRIDGE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.arg(role)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PCBRIDGE_INGRESS__LISTEN", addr.to_string())
        .env("PCBRIDGE_ADMIN__LISTEN", admin.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let spawned = Instant::now();
    let child = cmd.spawn().expect("spawn pcbridge");
    Server { child, addr, admin: Some(admin), spawned }
}

/// This benchmark binary re-executed as a reference server (`serve-bare`, `serve-minimal …`).
pub fn reference(args: &[&str]) -> Server {
    let exe = std::env::current_exe().expect("own executable");
    let spawned = Instant::now();
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn reference server");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("address line");
    let addr = line.trim().parse().expect("reference server address");
    Server { child, addr, admin: None, spawned }
}
