//! Black-box test harness: the real ingress and worker against the real RabbitMQ or
//! librdkafka's mock Kafka cluster, each test with its own destination prefix (and
//! RabbitMQ exchange), fed signed deliveries and read back from the broker. By concern:
//!
//! - [`app`]: the application under test: its test configuration, the ingress and
//!   worker started in-process, the real binary.
//! - [`bus`]: the brokers: [`bus::Bus`], reading back from Kafka and RabbitMQ, and
//!   [`bus::on_both_brokers!`] for a test that runs on each.
//! - [`pc`]: Partner Center's side of a delivery: signing certificate, signed headers,
//!   the catalogue of example events.
//! - [`pc_api`]: a stand-in for the APIs the worker calls (Entra ID, Partner Center,
//!   Graph, fraud events).
//! - [`pki`]: throwaway CAs and signing certificates.
//! - [`net`]: network stand-ins: certificate server, tripwire, cuttable proxy, ports.
//! - [`wait`]: waiting on an observable condition with a deadline.
//! - [`load`]: a steady load with faults, and the account of every accepted event.
//!
//! Each test binary compiles all of it and uses a part, hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod app;
pub mod bus;
pub mod load;
pub mod net;
pub mod pc;
pub mod pc_api;
pub mod pki;
pub mod wait;
