//! Network stand-ins: a certificate server, a tripwire that counts connections, and a
//! TCP proxy that can cut a broker off and let it back.

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::net::{TcpListener, TcpStream};

/// How the certificate server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertMode {
    Serve,
    Status(u16),
    Hang,
    /// `302 Found` to this URL.
    Redirect(String),
}

#[derive(Clone)]
struct CertState {
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    mode: Arc<Mutex<CertMode>>,
    hits: Arc<AtomicUsize>,
}

/// Serves certificates at `http://127.0.0.1:PORT/cert/{name}`.
pub struct CertServer {
    pub prefix: String,
    state: CertState,
}

impl CertServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind cert server");
        let addr = listener.local_addr().expect("addr");
        let state =
            CertState { files: Arc::default(), mode: Arc::new(Mutex::new(CertMode::Serve)), hits: Arc::default() };
        let app = Router::new().route("/cert/{name}", get(serve_cert)).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { prefix: format!("http://{addr}/cert/"), state }
    }

    pub fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        self.state.files.lock().unwrap().insert(name.to_string(), bytes);
        format!("{}{name}", self.prefix)
    }

    pub fn set_mode(&self, mode: CertMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

async fn serve_cert(State(s): State<CertState>, Path(name): Path<String>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let mode = s.mode.lock().unwrap().clone();
    match mode {
        CertMode::Redirect(to) => (StatusCode::FOUND, [(http::header::LOCATION, to)]).into_response(),
        CertMode::Status(code) => {
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR).into_response()
        }
        CertMode::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        CertMode::Serve => match s.files.lock().unwrap().get(&name) {
            Some(bytes) => bytes.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
    }
}

/// A listener that only counts the connections made to it.
pub struct Tripwire {
    pub addr: std::net::SocketAddr,
    count: Arc<AtomicUsize>,
}

impl Tripwire {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tripwire");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((_sock, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        Self { addr, count }
    }

    pub fn connections(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// A loopback port with nothing listening (connection refused).
/// Waits until a `pcbridge` process answers `/readyz` with 200 on `admin_port`, failing
/// if it exits first or is not ready `within`.
pub async fn wait_process_ready(child: &mut std::process::Child, admin_port: u16, within: Duration, what: &str) {
    pcbridge::partner_center::install_crypto_provider();
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + within;
    loop {
        let ready = http.get(format!("http://127.0.0.1:{admin_port}/readyz")).send().await.map(|r| r.status().as_u16());
        if matches!(ready, Ok(200)) {
            return;
        }
        assert!(child.try_wait().expect("wait").is_none(), "{what} exited before it was ready");
        assert!(std::time::Instant::now() < deadline, "{what} did not become ready within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// A TCP proxy to `upstream` that can be cut (every connection dropped, new ones
/// refused) and restored, to make a broker unreachable for one test only.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicUsize::new(0));
        let (u, g, upstream) = (up.clone(), generation.clone(), upstream.to_string());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (u, g, upstream) = (u.clone(), g.clone(), upstream.clone());
                let born = g.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut = async {
                        while u.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, () = cut => {} }
                });
            }
        });
        Self { addr, up, generation }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
