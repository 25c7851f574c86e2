//! The load generator: HTTP/1.1 keep-alive connections POSTing distinct, signed Partner
//! Center events, either at a fixed rate (open loop) or as fast as answers come back
//! (closed loop).
//!
//! Latency is request to answer (for the ingress: to 2xx, i.e. after the broker's
//! confirm). In the open loop it is counted from the request's *scheduled* time when the
//! connection is behind schedule, so a stalled server shows up in the percentiles instead
//! of silently slowing the generator down (coordinated omission).

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::net::TcpStream;

/// One ready-to-send request: a body and its signature headers.
pub struct Prepared {
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The requests a run cycles through, and where they go.
#[derive(Clone)]
pub struct Corpus {
    pub path: String,
    pub items: Arc<Vec<Prepared>>,
}

/// How requests are paced.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// A fixed rate in requests per second, spread over the connections.
    Open(f64),
    /// Each connection sends its next request as soon as the previous one is answered.
    Closed,
}

/// What one run measured (after its warm-up).
pub struct Outcome {
    pub measured: Duration,
    pub ok: u64,
    pub failed: u64,
    /// Microseconds, request to answer.
    pub latency: Histogram<u64>,
}

impl Outcome {
    /// Answered 2xx per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.measured.as_secs_f64()
    }

    /// A latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

async fn connect(addr: SocketAddr) -> Option<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// Drives `addr` for `warmup + measure` with `connections` connections.
pub async fn run(
    addr: SocketAddr,
    corpus: &Corpus,
    pace: Pace,
    connections: usize,
    warmup: Duration,
    measure: Duration,
) -> Outcome {
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + measure);
    let host = HeaderValue::from_str(&addr.to_string()).expect("host header");
    let tasks: Vec<_> = (0..connections)
        .map(|lane| {
            let (corpus, host) = (corpus.clone(), host.clone());
            tokio::spawn(async move {
                let mut latency = histogram();
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut sender = None;
                for k in 0u64.. {
                    let n = k * connections as u64 + lane as u64;
                    let scheduled = match pace {
                        Pace::Open(rate) => start + Duration::from_secs_f64(n as f64 / rate),
                        Pace::Closed => Instant::now(),
                    };
                    if scheduled >= until {
                        break;
                    }
                    // Behind schedule: count from when the request should have gone.
                    // On time: wait, and count from the actual send (the timer's own
                    // slack is the generator's, not the server's).
                    let sent_at = if Instant::now() >= scheduled {
                        scheduled
                    } else {
                        tokio::time::sleep_until(scheduled.into()).await;
                        Instant::now()
                    };
                    if sender.is_none() {
                        sender = connect(addr).await;
                    }
                    let Some(s) = sender.as_mut() else {
                        failed += u64::from(sent_at >= from);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let item = &corpus.items[n as usize % corpus.items.len()];
                    let mut rq = Request::post(corpus.path.as_str()).header(http::header::HOST, host.clone());
                    for (k, v) in &item.headers {
                        rq = rq.header(k, v);
                    }
                    let rq = rq.body(Full::new(item.body.clone())).expect("request");
                    let answered = match s.send_request(rq).await {
                        Ok(resp) => {
                            let status = resp.status();
                            resp.into_body().collect().await.is_ok() && status.is_success()
                        }
                        Err(_) => {
                            sender = None;
                            false
                        }
                    };
                    if sent_at >= from {
                        if answered {
                            ok += 1;
                            let _ = latency.record(sent_at.elapsed().as_micros().max(1) as u64);
                        } else {
                            failed += 1;
                        }
                    }
                }
                (ok, failed, latency)
            })
        })
        .collect();
    let mut outcome = Outcome { measured: measure, ok: 0, failed: 0, latency: histogram() };
    for t in tasks {
        if let Ok((ok, failed, latency)) = t.await {
            outcome.ok += ok;
            outcome.failed += failed;
            let _ = outcome.latency.add(&latency);
        }
    }
    // A closed loop may overrun `until` by one answer per connection; the window is what
    // was scheduled.
    outcome
}
