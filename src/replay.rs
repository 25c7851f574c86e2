//! `pcbridge replay`: publishes dead letters back to their raw destination so the worker
//! enriches them again (after the outage, the missing permission or the bug that
//! dead-lettered them is fixed); with `--receiver`, a forwarding receiver's dead letters
//! back to that receiver alone. Filters choose which (event name, error kind, time
//! received); `--dry-run` lists them. A replayed dead letter is removed from the
//! dead-letter queue only after the broker confirmed its copy. On Kafka, where a topic
//! is a log, nothing is removed: records stay until retention.

use crate::broker::{self, Backlog, Delivery, Message, Publisher};
use crate::config::Config;
use crate::contract::{
    destinations::{Destinations, cloud_event_type},
    headers,
};
use crate::telemetry::Metrics;
use std::{sync::Arc, time::Duration};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// `pcbridge replay` options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplayArgs {
    /// Only these event names (comma-separated or repeated).
    #[arg(long = "event", value_delimiter = ',', value_name = "NAME")]
    pub events: Vec<String>,
    /// Only these error kinds: permanent, retries-exhausted, foreign-host,
    /// unresolvable-uri, bad-payload, publish-refused.
    #[arg(long = "kind", value_delimiter = ',', value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Only events received at or after this time: RFC 3339, or an age such as 30m, 6h, 2d.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events received before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// List the dead letters that match; publish and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replay at most this many.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// A forwarding receiver's dead letters instead (`{prefix}forward.NAME.dead-letter`),
    /// replayed to that receiver alone (`{prefix}forward.NAME`).
    #[arg(long, value_name = "NAME")]
    pub receiver: Option<String>,
}

/// A `replay` failure. What was replayed before it stays replayed; the message says
/// whether running `replay` again is safe (it is: at worst one event is sent twice).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// `--since` or `--until` is not a time.
    #[error("{flag}: {source}")]
    Time {
        flag: &'static str,
        #[source]
        source: TimeError,
    },
    /// The dead letters cannot be read, or the publisher cannot connect.
    #[error("cannot {what} on {broker}: {source}")]
    Broker {
        what: String,
        broker: crate::config::BrokerKind,
        #[source]
        source: broker::SetupError,
    },
    /// A replayed event was not accepted: it is still in the dead letters.
    #[error(
        "publishing to {destination} failed after {replayed} replayed ({source}); nothing more was removed — run replay again"
    )]
    Publish {
        destination: String,
        replayed: u64,
        #[source]
        source: broker::PublishError,
    },
    /// A replayed event could not be removed from the dead letters.
    #[error("{id} was replayed but could not be removed from the dead letters ({source}); it may be replayed twice")]
    Remove {
        id: String,
        #[source]
        source: broker::SetupError,
    },
}

/// A `--since` / `--until` value that is neither a time nor an age.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("{0:?} is neither an RFC 3339 time nor an age like 30m, 6h or 2d")]
    NotATime(String),
    #[error("{0:?}: the unit of an age is s, m, h or d")]
    Unit(String),
}

/// The selection.
struct Filter {
    events: Vec<String>,
    kinds: Vec<String>,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
}

impl Filter {
    fn matches(&self, d: &Delivery) -> bool {
        let name = d.header(headers::EVENT_NAME).unwrap_or_default();
        let kind = d.header(headers::ERROR_KIND).unwrap_or_default();
        let received = d.header(headers::RECEIVED_AT).and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        (self.events.is_empty() || self.events.iter().any(|e| e == name))
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && self.since.is_none_or(|s| received.is_some_and(|r| r >= s))
            && self.until.is_none_or(|u| received.is_some_and(|r| r < u))
    }
}

/// Parses `--since` / `--until`: RFC 3339, or an age (`90s`, `30m`, `6h`, `2d`) before `now`.
pub fn parse_time(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, TimeError> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = number.parse().map_err(|_| TimeError::NotATime(text.to_string()))?;
    let age = match unit {
        "s" => time::Duration::seconds(n),
        "m" => time::Duration::minutes(n),
        "h" => time::Duration::hours(n),
        "d" => time::Duration::days(n),
        _ => return Err(TimeError::Unit(text.to_string())),
    };
    Ok(now - age)
}

/// The raw message a dead letter came from: same body, key and headers, without the
/// error headers; for a forwarding receiver's dead letter (`pc-receiver`), addressed to
/// that receiver's own destination.
pub fn raw_again(d: &Delivery, destinations: &Destinations) -> Option<Message> {
    let name = d.header(headers::EVENT_NAME)?;
    let id = d.header(headers::EVENT_ID)?.to_string();
    let mut headers = d.headers.clone();
    headers.retain(|(k, _)| !headers::DEAD_LETTER_ONLY.contains(&k.as_str()));
    let mut cloud_event = d.cloud_event.clone()?;
    cloud_event.ty = cloud_event_type(name);
    let destination = match d.header(headers::RECEIVER) {
        Some(receiver) => destinations.forward(receiver),
        None => destinations.raw(name),
    };
    Some(Message {
        destination,
        key: d.key.clone(),
        id,
        headers,
        cloud_event,
        content_type: crate::contract::cloud_event::CONTENT_TYPE,
        body: d.body.clone(),
    })
}

/// Runs the replay; returns the report to print.
pub async fn run(config: &Config, args: ReplayArgs) -> Result<String, ReplayError> {
    let now = OffsetDateTime::now_utc();
    let when = |t: &Option<String>, flag: &'static str| {
        t.as_deref().map(|t| parse_time(t, now).map_err(|source| ReplayError::Time { flag, source })).transpose()
    };
    let filter = Filter {
        events: args.events.clone(),
        kinds: args.kinds.clone(),
        since: when(&args.since, "--since")?,
        until: when(&args.until, "--until")?,
    };
    let destinations = config.broker.destinations();
    let dead_letter = match &args.receiver {
        Some(name) => destinations.forward_dead_letter(name),
        None => destinations.dead_letter(),
    };
    let mut backlog = broker::backlog(config, &dead_letter).await.map_err(|source| ReplayError::Broker {
        what: format!("read {dead_letter}"),
        broker: config.broker.kind,
        source,
    })?;
    let publisher = if args.dry_run {
        None
    } else {
        Some(broker::connect(config, "pcbridge-replay", Arc::new(Metrics::new())).await.map_err(|source| {
            ReplayError::Broker { what: "connect the publisher".into(), broker: config.broker.kind, source }
        })?)
    };
    eprintln!(
        "{dead_letter}: {} dead letters to examine{}",
        backlog.size(),
        if args.dry_run { " (dry run)" } else { "" }
    );
    let outcome = replay(backlog.as_mut(), publisher.as_deref(), &filter, &destinations, &args).await;
    let removes = backlog.removes();
    backlog.finish().await;
    if let Some(p) = &publisher {
        p.close(Duration::from_secs(5)).await;
    }
    let (examined, matched, replayed, listing) = outcome?;
    let mut report = listing;
    let verb = if args.dry_run { "would replay" } else { "replayed" };
    report.push_str(&format!("examined {examined} · matched {matched} · {verb} {replayed}\n"));
    if !args.dry_run && !removes && replayed > 0 {
        report.push_str(&format!(
            "note: {dead_letter} is a Kafka topic, a log: replayed records stay in it until retention removes them. \
             Consumers deduplicate by pc-event-id.\n"
        ));
    }
    Ok(report)
}

async fn replay(
    backlog: &mut dyn Backlog,
    publisher: Option<&dyn Publisher>,
    filter: &Filter,
    destinations: &Destinations,
    args: &ReplayArgs,
) -> Result<(u64, u64, u64, String), ReplayError> {
    let (mut examined, mut matched, mut replayed) = (0u64, 0u64, 0u64);
    let mut listing = String::new();
    let size = backlog.size();
    let mut last_progress = std::time::Instant::now();
    while args.limit.is_none_or(|l| replayed < l) {
        let Some(d) = backlog.next().await else { break };
        examined += 1;
        if last_progress.elapsed() >= Duration::from_secs(2) {
            eprintln!("… examined {examined}/{size} · matched {matched} · replayed {replayed}");
            last_progress = std::time::Instant::now();
        }
        if !filter.matches(&d) {
            continue;
        }
        matched += 1;
        let Some(publisher) = publisher else {
            listing.push_str(&format!(
                "{}  {:<44} {:<18} {:>2} attempts  {}\n",
                d.header(headers::RECEIVED_AT).unwrap_or("?"),
                d.header(headers::EVENT_NAME).unwrap_or("?"),
                d.header(headers::ERROR_KIND).unwrap_or("?"),
                d.header(headers::ATTEMPTS).unwrap_or("?"),
                d.header(headers::ERROR).unwrap_or_default(),
            ));
            replayed += 1;
            continue;
        };
        let Some(message) = raw_again(&d, destinations) else {
            eprintln!(
                "skipping a dead letter without pc-event-id / pc-event-name headers: it did not come from pcbridge"
            );
            continue;
        };
        publisher.publish(&message).await.map_err(|source| ReplayError::Publish {
            destination: message.destination.clone(),
            replayed,
            source,
        })?;
        backlog.remove(d.ack).await.map_err(|source| ReplayError::Remove { id: message.id.clone(), source })?;
        replayed += 1;
    }
    Ok((examined, matched, replayed, listing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now = datetime!(2026-01-10 12:00 UTC);
        assert_eq!(parse_time("2026-01-01T00:00:00Z", now), Ok(datetime!(2026-01-01 0:00 UTC)));
        assert_eq!(parse_time("90s", now), Ok(datetime!(2026-01-10 11:58:30 UTC)));
        assert_eq!(parse_time("6h", now), Ok(datetime!(2026-01-10 6:00 UTC)));
        assert_eq!(parse_time("2d", now), Ok(datetime!(2026-01-08 12:00 UTC)));
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("3w", now).is_err());
    }
}
