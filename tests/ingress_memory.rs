//! Memory under attack: unauthenticated clients send well-formed signature headers with
//! a bogus signature and trickle large bodies. The ingress bounds the body bytes it
//! buffers at once (`ingress.max_buffered_body_bytes`), sheds the rest with 503, keeps
//! its resident memory under the Kubernetes limit of the shipped manifests (128 MiB),
//! still answers a genuine event 200, and gives the memory back once the clients leave.
//!
//! The ingress is the real binary in a process of its own, so its RSS is its alone.

mod common;

use common::pc::Pc;
use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The ingress container's memory limit in deploy/kubernetes.
const CONTAINER_LIMIT_MIB: u64 = 128;
const CLIENTS: usize = 300;
const ATTACK: Duration = Duration::from_secs(12);

/// Resident memory of `pid` in MiB (VmRSS), or 0 once it is gone.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// One attacker: connects, sends signature headers with a bogus signature, then trickles
/// a 1 MB body in 16 KiB chunks (chunked, or under a Content-Length just below the
/// body limit), reconnecting whenever the server answers or closes.
async fn attacker(addr: String, cert_url: String, chunked: bool, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) {
    let path = pcbridge::ingress::WEBHOOK_PATH;
    let bogus = "A".repeat(344);
    let chunk = vec![b' '; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let framing = if chunked { "Transfer-Encoding: chunked".to_string() } else { "Content-Length: 65000".into() };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Signature {bogus}\r\nX-MS-Certificate-Url: {cert_url}\r\n\
             X-MS-Signature-Algorithm: rsa-sha256\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
        );
        if s.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let mut sent = 0usize;
        let mut buf = [0u8; 1024];
        while sent < 1_000_000 && !stop.load(Ordering::Relaxed) {
            let piece: &[u8] = if chunked { &chunk } else { &chunk[..chunk.len().min(65_000 - sent.min(65_000))] };
            if piece.is_empty() {
                break;
            }
            let written = if chunked {
                let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
                s.write_all(&framed).await
            } else {
                s.write_all(piece).await
            };
            if written.is_err() {
                break;
            }
            sent += piece.len();
            // Trickle: one chunk every 100 ms, unless the server has answered.
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {
                    answered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(_) => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_flood_stays_under_the_container_limit() {
    let pc = Pc::new().await;
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let (port, admin_port) = (common::net::closed_port().await, common::net::closed_port().await);
    let prefix = common::bus::unique_prefix();
    let mut child = common::app::pcbridge_command()
        .arg("ingress")
        .env("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS", mock.bootstrap_servers())
        .env("PCBRIDGE_KAFKA__CREATE_TOPICS", "false")
        .env("PCBRIDGE_BROKER__PREFIX", &prefix)
        .env("PCBRIDGE_INGRESS__LISTEN", format!("127.0.0.1:{port}"))
        .env("PCBRIDGE_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("PCBRIDGE_SIGNATURE__TRUSTED_CERTIFICATE_URL_PREFIXES", format!("[\"{}\"]", pc.certs.prefix))
        .env("PCBRIDGE_SIGNATURE__EXTRA_TRUST_ANCHORS_FILE", &pc.anchors_file)
        .env("PCBRIDGE_LOG__LEVEL", "error")
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn pcbridge ingress");
    let pid = child.id();
    common::net::wait_process_ready(&mut child, admin_port, Duration::from_secs(20), "the ingress").await;
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let url = format!("http://127.0.0.1:{port}{}", pcbridge::ingress::WEBHOOK_PATH);
    let genuine = |i: usize| {
        let body = format!(
            r#"{{"EventName":"subscription-updated","ResourceUri":"https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s-{i}"}}"#
        )
        .into_bytes();
        let mut rq = http.post(&url).body(body.clone());
        for (k, v) in pc.headers(&body) {
            rq = rq.header(k, v);
        }
        async move { rq.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(genuine(0).await, 200, "a genuine event before the attack");
    let resting = rss_mib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let addr = format!("127.0.0.1:{port}");
    let attackers: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(attacker(addr.clone(), pc.cert_url.clone(), i % 2 == 0, stop.clone(), answered.clone())))
        .collect();
    let started = Instant::now();
    let mut peak = 0;
    let mut genuine_statuses = Vec::new();
    while started.elapsed() < ATTACK {
        peak = peak.max(rss_mib(pid));
        // A genuine delivery every second, in the thick of it.
        if genuine_statuses.len() < (started.elapsed().as_secs() as usize) {
            genuine_statuses.push(genuine(genuine_statuses.len() + 1).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    peak = peak.max(rss_mib(pid));

    // Memory goes back once the clients are gone (jemalloc's background purge).
    let after_deadline = Instant::now() + Duration::from_secs(15);
    let mut after = rss_mib(pid);
    while after > resting + 24 && Instant::now() < after_deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss_mib(pid);
    }
    let metrics = http
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "memory under attack: resting {resting} MiB, peak {peak} MiB, after {after} MiB; server answers to attackers: {}; \
         genuine statuses {genuine_statuses:?}",
        answered.load(Ordering::Relaxed)
    );
    assert!(peak < CONTAINER_LIMIT_MIB, "peak RSS {peak} MiB reaches the container limit ({CONTAINER_LIMIT_MIB} MiB)");
    assert!(
        genuine_statuses.len() >= 8 && genuine_statuses.iter().all(|s| *s == 200),
        "every genuine event during the attack gets 200: {genuine_statuses:?}"
    );
    assert!(after <= resting + 24, "memory is given back after the burst: resting {resting} MiB, after {after} MiB");
    assert!(answered.load(Ordering::Relaxed) > 0, "the attackers were answered (401/413/503/408)");
    assert!(metrics.contains("pcbridge_ingress_request_duration_seconds_bucket"), "{metrics}");
}
