//! The set of seen change keys, shared by every ingress replica and reconciler: a table
//! in PostgreSQL, a database CSP partners already run (Azure Database for PostgreSQL),
//! which gives what the broker cannot — an atomic claim. A reconciler publishes a change
//! only after it inserted its key (two reconcilers racing: one insert wins); a key is
//! `claimed` until its publish is confirmed, then `published`; a claim whose reconciler
//! died is taken over once its lease has passed. The ingress marks every delivered
//! webhook's key `published`. Keys older than the reconcile horizon are pruned.
//!
//! Why not the broker: a Kafka compacted topic or a RabbitMQ stream records keys but
//! cannot arbitrate two concurrent reconcilers without a lock of its own, and RabbitMQ's
//! raw queues are consumed, so what was delivered is no longer there to look at.

use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// A store failure; reconciliation stops rather than publish without knowing.
#[derive(Debug, thiserror::Error)]
#[error("change store: {0}")]
pub struct StoreError(#[from] tokio_postgres::Error);

/// The table of seen change keys.
pub struct ChangeStore {
    client: Client,
    /// A quoted identifier (`"pcbridge_changes"`).
    table: String,
    /// The connection's task; dropping the store ends it.
    _connection: tokio_util::task::AbortOnDropHandle<()>,
}

impl ChangeStore {
    /// Connects to `url` (`postgres://user@host/db`) and creates `table` when missing.
    pub async fn connect(url: &str, table: &str) -> Result<Self, StoreError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "change store connection ended");
            }
        });
        let name = table.replace('"', "");
        let table = format!("\"{name}\"");
        let index = format!("\"{name}_updated_at\"");
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    change_key text PRIMARY KEY,
                    origin text NOT NULL,
                    state text NOT NULL,
                    claimed_by text,
                    updated_at timestamptz NOT NULL DEFAULT now()
                );
                CREATE INDEX IF NOT EXISTS {index} ON {table} (updated_at);"
            ))
            .await?;
        Ok(Self { client, table, _connection: tokio_util::task::AbortOnDropHandle::new(task) })
    }

    /// Claims `key` for reconciler `run`: true when this run may publish it — the key is
    /// new, or a claim of another run older than `lease` is taken over. A published key,
    /// or a live claim, is never claimed again.
    pub async fn claim(&self, key: &str, run: &str, lease: Duration) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO {t} (change_key, origin, state, claimed_by) VALUES ($1, 'reconcile', 'claimed', $2)
             ON CONFLICT (change_key) DO UPDATE SET claimed_by = $2, updated_at = now()
             WHERE {t}.state = 'claimed' AND {t}.updated_at < now() - make_interval(secs => $3)
             RETURNING change_key",
            t = self.table
        );
        let rows = self.client.query(&sql, &[&key, &run, &lease.as_secs_f64()]).await?;
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
        let sql = format!(
            "INSERT INTO {t} (change_key, origin, state) SELECT k, 'webhook', 'published' FROM unnest($1::text[]) AS k
             ON CONFLICT (change_key) DO UPDATE SET state = 'published', updated_at = now()",
            t = self.table
        );
        self.client.execute(&sql, &[&keys]).await?;
        Ok(())
    }

    /// Whether `key` was published (by webhook or reconciliation).
    pub async fn is_published(&self, key: &str) -> Result<bool, StoreError> {
        let sql = format!("SELECT 1 FROM {} WHERE change_key = $1 AND state = 'published'", self.table);
        Ok(!self.client.query(&sql, &[&key]).await?.is_empty())
    }

    /// Drops keys untouched for longer than `horizon`; returns how many.
    pub async fn prune(&self, horizon: Duration) -> Result<u64, StoreError> {
        let sql = format!("DELETE FROM {} WHERE updated_at < now() - make_interval(secs => $1)", self.table);
        Ok(self.client.execute(&sql, &[&horizon.as_secs_f64()]).await?)
    }
}
