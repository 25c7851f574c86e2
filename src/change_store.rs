//! The change store: the set of seen change keys (`pc-change-key`), shared by every
//! ingress replica and reconciler. A table in PostgreSQL, a database CSP partners
//! already run (Azure Database for PostgreSQL), which gives what the broker cannot — an
//! atomic claim. A reconciler publishes a change only after it inserted its key (two
//! reconcilers racing: one insert wins); a key is `claimed` until its publish is
//! confirmed, then `published`; a claim whose reconciler died is taken over once its
//! lease has passed. The ingress marks every delivered webhook's key `published`
//! through a [`Recorder`], off the request path. Keys older than the reconcile horizon
//! are pruned.
//!
//! Why not the broker: a Kafka compacted topic or a RabbitMQ stream records keys but
//! cannot arbitrate two concurrent reconcilers without a lock of its own, and RabbitMQ's
//! raw queues are consumed, so what was delivered is no longer there to look at.
//!
//! It knows nothing of the roles that use it; `config` says where it is.

use crate::config::{Config, ConfigError};
use crate::telemetry::Metrics;
use std::{sync::Arc, time::Duration};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

/// A store failure; reconciliation stops rather than publish without knowing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("change store: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The configuration names no store, or its password cannot be read.
    #[error("change store: {0}")]
    Config(String),
}

/// The table of seen change keys.
pub struct ChangeStore {
    client: Client,
    /// A quoted identifier (`"pcbridge_changes"`).
    table: String,
    /// The connection's task; dropping the store ends it.
    _connection: tokio_util::task::AbortOnDropHandle<()>,
}

impl ChangeStore {
    /// Connects to the store `config` names (`reconcile.store_url`, its password) and
    /// creates its table when missing.
    pub async fn open(config: &Config) -> Result<Self, StoreError> {
        let r = &config.reconcile;
        if r.store_url.is_empty() {
            return Err(StoreError::Config("reconcile.store_url is not set".into()));
        }
        let password = config.store_password().map_err(|e: ConfigError| StoreError::Config(e.to_string()))?;
        let mut pg: tokio_postgres::Config =
            r.store_url.parse().map_err(|e| StoreError::Config(format!("reconcile.store_url: {e}")))?;
        if let Some(password) = password {
            pg.password(password.expose());
        }
        pg.connect_timeout(Duration::from_secs(10));
        // `sslmode=require` (Azure Database for PostgreSQL's connection strings carry it):
        // TLS, the server's certificate verified against the web PKI roots. Otherwise
        // plain TCP: `prefer` would need an unverified handshake to fall back from.
        if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let (client, connection) = pg.connect(tls()?).await?;
            Self::setup(client, connection, &r.table).await
        } else {
            let (client, connection) = pg.connect(NoTls).await?;
            Self::setup(client, connection, &r.table).await
        }
    }

    /// Connects to `url` (`postgres://user@host/db`) and creates `table` when missing.
    pub async fn connect(url: &str, table: &str) -> Result<Self, StoreError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        Self::setup(client, connection, table).await
    }

    async fn setup<S, T>(
        client: Client,
        connection: tokio_postgres::Connection<S, T>,
        table: &str,
    ) -> Result<Self, StoreError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "change store connection ended");
            }
        });
        let name = table.replace(['"', '\''], "");
        let table = format!("\"{name}\"");
        let index = format!("\"{name}_updated_at\"");
        let resource_index = format!("\"{name}_resource\"");
        // Replicas starting at once would race CREATE TABLE IF NOT EXISTS (PostgreSQL
        // raises a unique violation in its catalogue): an advisory lock orders them.
        client
            .batch_execute(&format!(
                "SET client_min_messages = warning;
                BEGIN;
                SELECT pg_advisory_xact_lock(hashtext('pcbridge change store {name}'));
                CREATE TABLE IF NOT EXISTS {table} (
                    change_key text PRIMARY KEY,
                    origin text NOT NULL,
                    state text NOT NULL,
                    claimed_by text,
                    updated_at timestamptz NOT NULL DEFAULT now()
                );
                ALTER TABLE {table} ADD COLUMN IF NOT EXISTS resource text;
                ALTER TABLE {table} ADD COLUMN IF NOT EXISTS changed_at timestamptz;
                CREATE INDEX IF NOT EXISTS {index} ON {table} (updated_at);
                CREATE INDEX IF NOT EXISTS {resource_index} ON {table} (resource, changed_at);
                COMMIT;"
            ))
            .await?;
        Ok(Self { client, table, _connection: tokio_util::task::AbortOnDropHandle::new(task) })
    }

    /// Claims `key` for reconciler `run`: true when this run may publish it — the key is
    /// new, or a claim of another run older than `lease` is taken over. A published key,
    /// or a live claim, is never claimed again.
    pub async fn claim(&self, key: &str, run: &str, lease: Duration) -> Result<bool, StoreError> {
        let (resource, changed_at) = split_key(key);
        let sql = format!(
            "INSERT INTO {t} (change_key, origin, state, claimed_by, resource, changed_at)
             VALUES ($1, 'reconcile', 'claimed', $2, $4, $5::text::timestamptz)
             ON CONFLICT (change_key) DO UPDATE SET claimed_by = $2, updated_at = now()
             WHERE {t}.state = 'claimed' AND {t}.updated_at < now() - make_interval(secs => $3)
             RETURNING change_key",
            t = self.table
        );
        let rows = self.client.query(&sql, &[&key, &run, &lease.as_secs_f64(), &resource, &changed_at]).await?;
        Ok(!rows.is_empty())
    }

    /// Marks a claimed key published (its raw message was confirmed by the broker).
    pub async fn published(&self, key: &str) -> Result<(), StoreError> {
        let sql = format!("UPDATE {} SET state = 'published', updated_at = now() WHERE change_key = $1", self.table);
        self.client.execute(&sql, &[&key]).await?;
        Ok(())
    }

    /// Gives up `run`'s claim of `key` (its publish failed): another run may take it.
    pub async fn release(&self, key: &str, run: &str) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {} WHERE change_key = $1 AND state = 'claimed' AND claimed_by = $2", self.table);
        self.client.execute(&sql, &[&key, &run]).await?;
        Ok(())
    }

    /// Records keys delivered by webhook as published (the ingress, after the broker
    /// confirmed each).
    pub async fn delivered(&self, keys: &[String]) -> Result<(), StoreError> {
        let (resources, times): (Vec<Option<&str>>, Vec<Option<&str>>) = keys.iter().map(|k| split_key(k)).unzip();
        let sql = format!(
            "INSERT INTO {t} (change_key, origin, state, resource, changed_at)
             SELECT k, 'webhook', 'published', r, c::timestamptz
             FROM unnest($1::text[], $2::text[], $3::text[]) AS u(k, r, c)
             ON CONFLICT (change_key) DO UPDATE SET state = 'published', updated_at = now()",
            t = self.table
        );
        self.client.execute(&sql, &[&keys, &resources, &times]).await?;
        Ok(())
    }

    /// Whether the change `key` names reached the broker: that very key, or — for a key
    /// named by event, resource and change time — the same event of the same resource
    /// within `window` of that time. Partner Center's webhook and the record
    /// reconciliation reads seldom agree on the time to the tick.
    pub async fn is_delivered(&self, key: &str, window: Duration) -> Result<bool, StoreError> {
        let (resource, changed_at) = split_key(key);
        let sql = format!(
            "SELECT 1 FROM {} WHERE state = 'published' AND (change_key = $1
               OR (resource = $2 AND changed_at BETWEEN $3::text::timestamptz - make_interval(secs => $4)
                                                  AND $3::text::timestamptz + make_interval(secs => $4)))
             LIMIT 1",
            self.table
        );
        let rows = self.client.query(&sql, &[&key, &resource, &changed_at, &window.as_secs_f64()]).await?;
        Ok(!rows.is_empty())
    }

    /// Drops keys untouched for longer than `horizon`; returns how many.
    pub async fn prune(&self, horizon: Duration) -> Result<u64, StoreError> {
        let sql = format!("DELETE FROM {} WHERE updated_at < now() - make_interval(secs => $1)", self.table);
        Ok(self.client.execute(&sql, &[&horizon.as_secs_f64()]).await?)
    }
}

/// The TLS connector of the store connection: rustls with the web PKI roots (Azure
/// Database for PostgreSQL's certificates chain to DigiCert and Microsoft roots in it).
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `{EventName}|{ResourceUri}|{time}` → (`{EventName}|{ResourceUri}`, `{time}`); `None`s
/// for the other key forms (`audit:…`, `event:…`), or a time that is not RFC 3339.
fn split_key(key: &str) -> (Option<&str>, Option<&str>) {
    let Some((resource, time)) = key.rsplit_once('|') else { return (None, None) };
    if !resource.contains('|')
        || time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339).is_err()
    {
        return (None, None);
    }
    (Some(resource), Some(time))
}

/// Keys waiting to be written; past this the newest are dropped (and counted).
const RECORDER_QUEUE: usize = 50_000;
/// Keys written in one statement.
const RECORDER_BATCH: usize = 500;

/// Records the change keys of delivered webhooks in the store, in batches, in a task of
/// its own: the ingress answers Partner Center without waiting for the database, and a
/// database outage never fails a webhook. What it costs: a key not yet written (or
/// dropped while the store was down) lets a reconcile run publish that change a second
/// time, with the same `pc-change-key`.
#[derive(Clone)]
pub struct Recorder {
    /// Bounded: a store that is down for long cannot make the ingress hold unbounded keys.
    queue: mpsc::Sender<String>,
    metrics: Arc<Metrics>,
}

impl Recorder {
    /// Starts the writer for the store `config` names. It connects (and reconnects)
    /// on its own; [`RecorderTask::finish`] flushes what is queued.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> (Self, RecorderTask) {
        let (queue, keys) = mpsc::channel(RECORDER_QUEUE);
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(write_keys(config.clone(), keys, stop.clone(), metrics.clone()));
        (Self { queue, metrics }, RecorderTask { task, stop })
    }

    /// Queues `key` (never waits).
    pub fn record(&self, key: String) {
        if self.queue.try_send(key).is_err() {
            self.metrics.change_keys.with_label_values(&["dropped"]).inc();
        }
    }
}

/// The recorder's writer task.
pub struct RecorderTask {
    task: tokio::task::JoinHandle<()>,
    /// Cancelled by [`RecorderTask::finish`]: the writer takes no more keys, writes
    /// those queued, and ends.
    stop: tokio_util::sync::CancellationToken,
}

impl RecorderTask {
    /// Stops taking keys and waits up to `deadline` for the queued ones to be written.
    pub async fn finish(self, deadline: Duration) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
            tracing::warn!("change store: queued change keys not written before the deadline");
        }
    }
}

async fn write_keys(
    config: Config,
    mut keys: mpsc::Receiver<String>,
    stop: tokio_util::sync::CancellationToken,
    metrics: Arc<Metrics>,
) {
    let mut store: Option<ChangeStore> = None;
    let mut batch: Vec<String> = Vec::with_capacity(RECORDER_BATCH);
    let mut delays = retry_delays();
    loop {
        if batch.is_empty() {
            let next = tokio::select! {
                key = keys.recv() => key,
                () = stop.cancelled(), if !keys.is_closed() => {
                    // Queued keys can still be received; nothing new can be sent.
                    keys.close();
                    continue;
                }
            };
            match next {
                Some(key) => batch.push(key),
                None => return,
            }
        }
        while batch.len() < RECORDER_BATCH {
            match keys.try_recv() {
                Ok(key) => batch.push(key),
                Err(_) => break,
            }
        }
        if store.is_none() {
            match ChangeStore::open(&config).await {
                Ok(s) => store = Some(s),
                Err(e) => tracing::warn!(error = %e, "change store unreachable; delivered change keys wait"),
            }
        }
        let written = match &store {
            Some(s) => s.delivered(&batch).await,
            None => Err(StoreError::Config("not connected".into())),
        };
        match written {
            Ok(()) => {
                metrics.change_keys.with_label_values(&["recorded"]).inc_by(batch.len() as u64);
                batch.clear();
                delays = retry_delays();
            }
            Err(e) => {
                metrics.change_keys.with_label_values(&["failed"]).inc_by(batch.len() as u64);
                if matches!(e, StoreError::Postgres(_)) {
                    tracing::warn!(error = %e, keys = batch.len(), "writing delivered change keys failed; retrying");
                }
                store = None;
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(30))).await;
            }
        }
    }
}

fn retry_delays() -> impl Iterator<Item = Duration> {
    use backon::{BackoffBuilder, ExponentialBuilder};
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}
