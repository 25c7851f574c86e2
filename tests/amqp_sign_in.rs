//! The Entra ID sign-in of the AMQP 1.0 kind, end to end against a stand-in of Service
//! Bus's claims-based security: an AMQP 1.0 listener (fe2o3's acceptor) with a `$cbs`
//! node that answers put-token as Service Bus does (status 202), and a queue that accepts
//! transfers. RabbitMQ has no `$cbs`, so this is where the sign-in is seen whole: the
//! token comes from Entra ID (the stand-in) for the namespace's scope, is put for the
//! address before the link to it attaches, and the publish is then accepted.

mod common;

use common::pc_api::{self, PcApi};
use fe2o3_amqp::{
    Receiver, Sender,
    acceptor::{
        ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SaslAnonymousMechanism, SessionAcceptor,
    },
};
use fe2o3_amqp_types::{
    messaging::{ApplicationProperties, Body, Message, MessageId, Properties},
    primitives::{SimpleValue, Value},
};
use pcbridge::{
    broker::{self, CloudEvent},
    config::{AmqpSignIn, BrokerKind, Config, Secret},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::net::TcpListener;

/// What the stand-in saw, in order: `put-token {name} {type} {token}`, `attach {address}`,
/// `message {id}`.
type Log = Arc<Mutex<Vec<String>>>;

/// Accepts connections (SASL ANONYMOUS, as Service Bus with Entra ID) until the test ends.
async fn service_bus(listener: TcpListener, log: Log) {
    let acceptor = ConnectionAcceptor::builder()
        .container_id("fake-service-bus")
        .sasl_acceptor(SaslAnonymousMechanism::new())
        .build();
    while let Ok((stream, _)) = listener.accept().await {
        let Ok(mut connection) = acceptor.accept(stream).await else { continue };
        let log = log.clone();
        tokio::spawn(async move {
            while let Ok(session) = SessionAcceptor::new().accept(&mut connection).await {
                tokio::spawn(session_links(session, log.clone()));
            }
        });
    }
}

/// One session: the `$cbs` request and reply links answer put-token; any other link is a
/// queue that accepts what it receives.
async fn session_links(mut session: ListenerSessionHandle, log: Log) {
    let links = LinkAcceptor::new();
    let (mut requests, mut replies): (Option<Receiver>, Option<Sender>) = (None, None);
    loop {
        tokio::select! {
            link = links.accept(&mut session) => match link {
                Ok(LinkEndpoint::Receiver(receiver)) => {
                    let address = receiver.target().as_ref().and_then(|t| t.address.clone()).unwrap_or_default();
                    if address == "$cbs" {
                        requests = Some(receiver);
                    } else {
                        log.lock().unwrap().push(format!("attach {address}"));
                        tokio::spawn(queue(receiver, log.clone()));
                    }
                }
                Ok(LinkEndpoint::Sender(sender)) => replies = Some(sender),
                Err(_) => return,
            },
            request = async { requests.as_mut().expect("guarded").recv::<Body<Value>>().await }, if requests.is_some() => {
                let Ok(delivery) = request else { return };
                let receiver = requests.as_mut().expect("guarded");
                let _ = receiver.accept(&delivery).await;
                let message = delivery.into_message();
                let property = |k: &str| match message.application_properties.as_ref().and_then(|a| a.get(k)) {
                    Some(SimpleValue::String(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                let token = match &message.body {
                    Body::Value(v) => match &v.0 {
                        Value::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    },
                    other => format!("{other:?}"),
                };
                log.lock().unwrap().push(format!(
                    "{} {} {} {token}",
                    property("operation"),
                    property("name"),
                    property("type")
                ));
                let id = message.properties.as_ref().and_then(|p| p.message_id.clone()).unwrap_or(MessageId::Ulong(0));
                let reply = Message::builder()
                    .properties(Properties::builder().correlation_id(id).build())
                    .application_properties(
                        ApplicationProperties::builder().insert("status-code", SimpleValue::Ushort(202)).build(),
                    )
                    .value(Value::Null)
                    .build();
                let Some(replies) = replies.as_mut() else { return };
                if replies.send(reply).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A queue: accepts every transfer.
async fn queue(mut receiver: Receiver, log: Log) {
    while let Ok(delivery) = receiver.recv::<Body<Value>>().await {
        let id = match delivery.message().properties.as_ref().and_then(|p| p.message_id.clone()) {
            Some(MessageId::String(id)) => id,
            other => format!("{other:?}"),
        };
        log.lock().unwrap().push(format!("message {id}"));
        if receiver.accept(&delivery).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_id_tokens_are_put_on_cbs_before_the_link_attaches() {
    pcbridge::partner_center::install_crypto_provider();
    let api = PcApi::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let log: Log = Arc::default();
    tokio::spawn(service_bus(listener, log.clone()));

    let mut c = Config::default();
    c.broker.kind = BrokerKind::Amqp;
    c.amqp.url = format!("amqp://127.0.0.1:{port}");
    c.amqp.sign_in = AmqpSignIn::EntraId;
    c.partner_center.token_base_url = api.base.clone();
    c.partner_center.tenant_id = "tenant-1".into();
    c.partner_center.client_id = pc_api::CLIENT_ID.into();
    c.partner_center.client_secret = Secret::new(pc_api::CLIENT_SECRET);
    c.validate().expect("valid");
    let metrics = Arc::new(pcbridge::telemetry::Metrics::new());
    let publisher = broker::connect(&c, "cbs-test", metrics).await.expect("connected");
    let message = broker::Message {
        destination: "partnercenter.events".into(),
        key: "https://api.partnercenter.microsoft.com/v1/customers/c/subscriptions/s".into(),
        id: "e-1".into(),
        headers: vec![("pc-event-id".into(), "e-1".into())],
        cloud_event: CloudEvent {
            id: "e-1".into(),
            source: "https://api.partnercenter.microsoft.com".into(),
            ty: "com.microsoft.partnercenter.subscription-updated".into(),
            subject: None,
            time: None,
        },
        content_type: "application/json",
        body: bytes::Bytes::from_static(b"{}"),
    };
    tokio::time::timeout(Duration::from_secs(10), publisher.publish(&message))
        .await
        .expect("answered")
        .expect("accepted");
    publisher.close(Duration::from_secs(1)).await;

    let issued = api.issued_tokens();
    assert_eq!(issued.len(), 1, "one token from Entra ID");
    assert_eq!(
        api.token_requests(),
        vec![("client_credentials".to_string(), "https://127.0.0.1/.default".to_string())],
        "the scope of the namespace (the URL's host)"
    );
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![
            format!("put-token amqp://127.0.0.1/partnercenter.events jwt {}", issued[0]),
            "attach partnercenter.events".to_string(),
            "message e-1".to_string(),
        ],
        "the token is put for the address before its link attaches"
    );
}
