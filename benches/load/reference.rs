//! The two reference servers the ingress is measured against, each run as a process of
//! its own (this benchmark binary re-executed with `serve-bare` or `serve-minimal`):
//!
//! - **bare**: an axum handler that answers 200 — the HTTP limit of this machine;
//! - **minimal**: only the three steps no webhook bridge can skip — RSA verify with the
//!   public key loaded once, read `EventName`, publish and await the broker's confirm with
//!   the ingress's producer settings (AMQP 1.0: an unsettled durable transfer and its
//!   `accepted` outcome). The ingress's ratio to it is the cost of everything
//!   pcbridge adds (certificate cache, event id, headers, metrics, tracing, limits).
//!
//! Each prints its address on the first line of stdout.

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::any};
use base64::Engine;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, options::*};
use rdkafka::producer::{FutureProducer, FutureRecord};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use serde::Deserialize;
use std::{borrow::Cow, collections::HashMap, sync::Arc, time::Duration};
use tokio::net::TcpListener;

async fn listen() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("{}", listener.local_addr().expect("address"));
    listener
}

/// `serve-bare`
pub async fn bare() {
    let app = Router::new().fallback(any(|| async { StatusCode::OK }));
    axum::serve(listen().await, app).await.expect("serve");
}

enum Sink {
    Kafka(FutureProducer),
    /// `serial`: one publish in flight at a time (each waits for the previous confirm).
    Rabbit {
        channel: Channel,
        exchange: String,
        serial: Option<tokio::sync::Mutex<()>>,
    },
    /// AMQP 1.0: a sender link per destination; a transfer is started under the link's
    /// lock and its disposition awaited outside it, so many are in flight.
    Amqp {
        connection: tokio::sync::Mutex<fe2o3_amqp::connection::ConnectionHandle<()>>,
        senders: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<fe2o3_amqp::Sender>>>>,
    },
}

struct Minimal {
    /// The RSAPublicKey of the signing certificate, read once at start.
    key: Vec<u8>,
    prefix: String,
    sink: Sink,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "EventName", borrow)]
    name: Cow<'a, str>,
}

async fn minimal_handler(State(m): State<Arc<Minimal>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Signature "))
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
    let Some(signature) = signature else { return StatusCode::UNAUTHORIZED };
    if UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &m.key).verify(&body, &signature).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(event) = serde_json::from_slice::<Event>(&body) else { return StatusCode::BAD_REQUEST };
    let destination = format!("{}{}", m.prefix, event.name);
    let published = match &m.sink {
        Sink::Kafka(producer) => {
            let record = FutureRecord::<(), _>::to(&destination).payload(&body[..]);
            producer.send(record, Duration::from_secs(5)).await.is_ok()
        }
        Sink::Rabbit { channel, exchange, serial } => {
            let _one_at_a_time = match serial {
                Some(lock) => Some(lock.lock().await),
                None => None,
            };
            let props = BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            match channel
                .basic_publish(exchange.as_str().into(), destination.as_str().into(), options, &body, props)
                .await
            {
                Ok(confirm) => matches!(confirm.await, Ok(lapin::Confirmation::Ack(None))),
                Err(_) => false,
            }
        }
        Sink::Amqp { connection, senders } => {
            let sender = {
                let mut senders = senders.lock().await;
                match senders.get(&destination) {
                    Some(s) => s.clone(),
                    None => {
                        let mut connection = connection.lock().await;
                        let mut session = fe2o3_amqp::Session::begin(&mut connection).await.expect("session");
                        let target = fe2o3_amqp_types::messaging::Target::builder()
                            .address(format!("/queue/{destination}"))
                            .durable(fe2o3_amqp_types::messaging::TerminusDurability::UnsettledState)
                            .build();
                        let sender = fe2o3_amqp::Sender::builder()
                            .name(destination.clone())
                            .target(target)
                            .attach(&mut session)
                            .await
                            .expect("sender");
                        std::mem::forget(session); // lives as long as the process
                        let sender = Arc::new(tokio::sync::Mutex::new(sender));
                        senders.insert(destination.clone(), sender.clone());
                        sender
                    }
                }
            };
            let message = fe2o3_amqp_types::messaging::Message::builder()
                .header(fe2o3_amqp_types::messaging::Header { durable: true, ..Default::default() })
                .data(fe2o3_amqp_types::primitives::Binary::from(body.to_vec()))
                .build();
            let sendable = fe2o3_amqp::Sendable::builder().message(message).settled(false).build();
            let started = sender.lock().await.send_batchable(sendable).await;
            match started {
                Ok(fut) => matches!(fut.await, Ok(fe2o3_amqp_types::messaging::Outcome::Accepted(_))),
                Err(_) => false,
            }
        }
    };
    if published { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// `serve-minimal <cert.der> <prefix> kafka <bootstrap>` or
/// `serve-minimal <cert.der> <prefix> rabbitmq <url> <exchange> [serial]` or
/// `serve-minimal <cert.der> <prefix> amqp <url>`
pub async fn minimal(args: &[String]) {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let der = std::fs::read(arg(0)).expect("certificate file");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    let key = cert.public_key().subject_public_key.data.to_vec();
    let sink = match arg(2) {
        "kafka" => Sink::Kafka(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", arg(3))
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "1")
                .set("message.timeout.ms", "5000")
                .set("request.timeout.ms", "5000")
                .create()
                .expect("producer"),
        ),
        "amqp" => {
            let connection = fe2o3_amqp::Connection::open("pcbridge-bench-minimal", arg(3)).await.expect("amqp");
            Sink::Amqp {
                connection: tokio::sync::Mutex::new(connection),
                senders: tokio::sync::Mutex::new(HashMap::new()),
            }
        }
        _ => {
            let conn = Connection::connect(arg(3), ConnectionProperties::default()).await.expect("rabbitmq");
            let channel = conn.create_channel().await.expect("channel");
            channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
            // A durable queue per event, bound by its name: pcbridge's raw destinations
            // are shard queues now, which the minimal does not compute.
            let exchange = arg(4);
            for stem in pcbridge::contract::destinations::all_stems() {
                let queue = format!("{}{stem}", arg(1));
                let durable = QueueDeclareOptions { durable: true, ..Default::default() };
                channel.queue_declare(queue.as_str().into(), durable, Default::default()).await.expect("queue");
                if !exchange.is_empty() {
                    channel
                        .queue_bind(
                            queue.as_str().into(),
                            exchange.into(),
                            queue.as_str().into(),
                            Default::default(),
                            Default::default(),
                        )
                        .await
                        .expect("bind");
                }
            }
            std::mem::forget(conn); // lives as long as the process
            let serial = (arg(5) == "serial").then(|| tokio::sync::Mutex::new(()));
            Sink::Rabbit { channel, exchange: arg(4).to_string(), serial }
        }
    };
    let state = Arc::new(Minimal { key, prefix: arg(1).to_string(), sink });
    let app = Router::new().fallback(any(minimal_handler)).with_state(state);
    axum::serve(listen().await, app).await.expect("serve");
}
