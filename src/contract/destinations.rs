//! Destination naming (`docs/message-contract.md`) — the one place that decides what a
//! destination is called, on every broker. The [`Layout`] says how events map to
//! destinations:
//!
//! - `per-event` (the default): raw `{prefix}{EventName}`, enriched
//!   `{prefix}{EventName}.enriched`, and `{prefix}unrecognized` for an event name that is
//!   not a safe destination name;
//! - `per-category`: one raw and one enriched destination per family of events
//!   (`{prefix}subscriptions`, `{prefix}gdap`, … see [`category`]);
//! - `single`: `{prefix}events` and `{prefix}events.enriched`.
//!
//! Every layout has one `{prefix}dead-letter`. The event name always travels in the
//! `pc-event-name` header and the CloudEvents `type`, whatever the destination.

use crate::partner_center::event::CATALOGUE;

/// The destination stem of event names that cannot be used verbatim.
pub const UNRECOGNIZED: &str = "unrecognized";

/// Longest event name used verbatim in a destination name.
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// Whether `name` can be used verbatim in a topic / queue / routing-key name.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EVENT_NAME_LEN
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// How events map to destinations (`broker.layout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// A raw and an enriched destination per event name: 51 in all.
    #[default]
    PerEvent,
    /// A raw and an enriched destination per family of events: 19 in all.
    PerCategory,
    /// One raw and one enriched destination for every event: 3 in all (the event hubs a
    /// Basic or Standard Event Hubs namespace can hold).
    Single,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::PerEvent => "per-event",
            Layout::PerCategory => "per-category",
            Layout::Single => "single",
        })
    }
}

/// The families of the `per-category` layout, each a destination name.
pub const CATEGORIES: [&str; 9] =
    ["subscriptions", "referrals", "gdap", "dap", "new-commerce-migrations", "usage", "fraud", "test", UNRECOGNIZED];

/// The family of an event name in the `per-category` layout, by its prefix, so that an
/// event Microsoft adds later joins its family; a name of no family (or an unsafe one)
/// is `unrecognized`. The reseller relationship belongs with DAP, whose relationship it
/// sets up.
pub fn category(event_name: &str) -> &'static str {
    if !is_safe_name(event_name) {
        return UNRECOGNIZED;
    }
    let families: [(&[&str], &'static str); 8] = [
        (&["subscription-"], "subscriptions"),
        (&["referral-", "related-referral-"], "referrals"),
        (&["granular-admin-"], "gdap"),
        (&["dap-admin-", "reseller-relationship-"], "dap"),
        (&["new-commerce-migration-"], "new-commerce-migrations"),
        (&["usagerecords-"], "usage"),
        (&["azure-fraud-"], "fraud"),
        (&["test-"], "test"),
    ];
    families
        .iter()
        .find(|(prefixes, _)| prefixes.iter().any(|p| event_name.starts_with(p)))
        .map_or(UNRECOGNIZED, |(_, family)| family)
}

/// The stem of the `single` layout's destinations.
pub const SINGLE: &str = "events";

/// Destination names, from the configured prefix and layout.
#[derive(Debug, Clone)]
pub struct Destinations {
    prefix: String,
    layout: Layout,
}

impl Destinations {
    /// The `per-event` layout under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self::with_layout(prefix, Layout::PerEvent)
    }

    pub fn with_layout(prefix: impl Into<String>, layout: Layout) -> Self {
        Self { prefix: prefix.into(), layout }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// What an event's destinations are named after in this layout: its stem, its
    /// family, or `events`.
    fn group<'a>(&self, event_name: &'a str) -> &'a str {
        match self.layout {
            Layout::PerEvent => self.stem(event_name),
            Layout::PerCategory => category(event_name),
            Layout::Single => SINGLE,
        }
    }

    /// The name an event's destinations are built from: the event name when safe,
    /// `unrecognized` otherwise (the event is signed by Microsoft, so it is kept).
    pub fn stem<'a>(&self, event_name: &'a str) -> &'a str {
        if is_safe_name(event_name) { event_name } else { UNRECOGNIZED }
    }

    /// Where the ingress publishes an event: `{prefix}{EventName}` (or
    /// `{prefix}unrecognized`), `{prefix}{family}` or `{prefix}events`.
    pub fn raw(&self, event_name: &str) -> String {
        format!("{}{}", self.prefix, self.group(event_name))
    }

    /// Where the worker publishes the enriched event: the raw destination's name plus
    /// `.enriched`.
    pub fn enriched(&self, event_name: &str) -> String {
        format!("{}{}.enriched", self.prefix, self.group(event_name))
    }

    /// `{prefix}dead-letter`.
    pub fn dead_letter(&self) -> String {
        format!("{}dead-letter", self.prefix)
    }

    /// Whether `name` holds raw messages under this prefix: neither enriched nor a dead
    /// letter (a raw destination, or a receiver's [`Destinations::forward`]). On
    /// RabbitMQ these are split into shards (`contract::shards`).
    pub fn is_raw(&self, name: &str) -> bool {
        name.strip_prefix(self.prefix.as_str()).is_some_and(|rest| {
            !rest.is_empty()
                && !rest.ends_with(".enriched")
                && !rest.ends_with(FORWARD_DEAD_LETTER_SUFFIX)
                && name != self.dead_letter()
        })
    }

    /// `{prefix}forward.{receiver}`: the raw messages of one forwarding receiver that
    /// did not come from the raw destinations — its replayed dead letters. On RabbitMQ it
    /// is also the receiver's copy of the raw destinations it wants (its shard `k` is
    /// bound to shard `k` of each), so a replay reaches that receiver alone.
    pub fn forward(&self, receiver: &str) -> String {
        format!("{}{FORWARD_STEM}{receiver}", self.prefix)
    }

    /// `{prefix}forward.{receiver}.dead-letter`: what could not be forwarded to that
    /// receiver within its retry budget.
    pub fn forward_dead_letter(&self, receiver: &str) -> String {
        format!("{}{FORWARD_STEM}{receiver}{FORWARD_DEAD_LETTER_SUFFIX}", self.prefix)
    }

    /// The raw destinations of every catalogue event and `unrecognized`, once each.
    pub fn all_raw(&self) -> Vec<String> {
        self.sources(&all_stems().collect::<Vec<_>>())
    }

    /// The raw destinations holding the events `stems`, once each: what a worker for
    /// those events consumes (in a shared layout, the whole destination).
    pub fn sources<S: AsRef<str>>(&self, stems: &[S]) -> Vec<String> {
        unique(stems.iter().map(|s| self.raw(s.as_ref())))
    }

    /// What a worker consuming `stems` publishes to: their enriched destinations, once
    /// each, and the dead letter.
    pub fn outputs<S: AsRef<str>>(&self, stems: &[S]) -> Vec<String> {
        unique(stems.iter().map(|s| self.enriched(s.as_ref())).chain([self.dead_letter()]))
    }
}

/// What [`Destinations::forward`] names start with after the prefix.
const FORWARD_STEM: &str = "forward.";
/// What ends a receiver's dead letter's name.
const FORWARD_DEAD_LETTER_SUFFIX: &str = ".dead-letter";

/// `names` without repeats, in first-seen order.
fn unique(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Every destination stem: the catalogue's event names and `unrecognized`.
pub fn all_stems() -> impl Iterator<Item = &'static str> {
    CATALOGUE.iter().copied().chain([UNRECOGNIZED])
}

/// Appended to the CloudEvents `type` of an enriched message.
pub const ENRICHED_TYPE_SUFFIX: &str = ".enriched";
/// Appended to the CloudEvents `type` of a dead letter.
pub const DEAD_LETTER_TYPE_SUFFIX: &str = ".deadletter";

/// The CloudEvents `type` of a raw event.
pub fn cloud_event_type(event_name: &str) -> String {
    format!("com.microsoft.partnercenter.{event_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let d = Destinations::new("partnercenter.");
        assert_eq!(d.raw("subscription-updated"), "partnercenter.subscription-updated");
        assert_eq!(d.enriched("subscription-updated"), "partnercenter.subscription-updated.enriched");
        assert_eq!(d.dead_letter(), "partnercenter.dead-letter");
        assert_eq!(d.raw("a b"), "partnercenter.unrecognized");
        assert_eq!(d.raw("x/../y"), "partnercenter.unrecognized");
        assert_eq!(d.raw(&"a".repeat(201)), "partnercenter.unrecognized");
        assert_eq!(d.raw(&"a".repeat(200)), format!("partnercenter.{}", "a".repeat(200)));
        assert_eq!(d.all_raw().len(), 25);
        assert_eq!(
            d.outputs(&["referral-created"]),
            ["partnercenter.referral-created.enriched", "partnercenter.dead-letter"]
        );
        assert!(CATALOGUE.iter().all(|n| is_safe_name(n)));
    }

    #[test]
    fn forwarding_destinations() {
        let d = Destinations::new("partnercenter.");
        assert_eq!(d.forward("cipp"), "partnercenter.forward.cipp");
        assert_eq!(d.forward_dead_letter("cipp"), "partnercenter.forward.cipp.dead-letter");
        assert!(d.is_raw(&d.forward("cipp")), "a receiver's copy holds raw messages");
        assert!(!d.is_raw(&d.forward_dead_letter("cipp")));
        assert!(!d.is_raw(&d.dead_letter()));
        assert!(d.is_raw(&d.raw("subscription-updated")));
    }

    #[test]
    fn layouts() {
        let per_category = Destinations::with_layout("p.", Layout::PerCategory);
        assert_eq!(per_category.raw("subscription-updated"), "p.subscriptions");
        assert_eq!(per_category.enriched("related-referral-created"), "p.referrals.enriched");
        assert_eq!(per_category.raw("granular-admin-access-assignment-deleted"), "p.gdap");
        assert_eq!(per_category.raw("reseller-relationship-accepted-by-customer"), "p.dap");
        assert_eq!(per_category.raw("usagerecords-thresholdExceeded"), "p.usage");
        assert_eq!(per_category.raw("subscription-renewed"), "p.subscriptions", "a new event joins its family");
        assert_eq!(per_category.raw("something-else"), "p.unrecognized");
        assert_eq!(per_category.raw("a b"), "p.unrecognized");
        let raw = per_category.all_raw();
        assert_eq!(raw.len(), CATEGORIES.len(), "every family has a catalogue event: {raw:?}");
        assert!(CATEGORIES.iter().all(|c| raw.contains(&format!("p.{c}"))));
        assert_eq!(
            per_category.outputs(&["referral-created", "referral-updated"]),
            ["p.referrals.enriched", "p.dead-letter"]
        );

        let single = Destinations::with_layout("p.", Layout::Single);
        assert_eq!(single.all_raw(), ["p.events"]);
        assert_eq!(single.enriched("a b"), "p.events.enriched");
        assert_eq!(single.outputs(&all_stems().collect::<Vec<_>>()), ["p.events.enriched", "p.dead-letter"]);
        assert_eq!(single.stem("subscription-updated"), "subscription-updated", "metric labels stay per event");

        let per_event = Destinations::new("p.");
        let total = |d: &Destinations| d.all_raw().len() + d.outputs(&all_stems().collect::<Vec<_>>()).len();
        assert_eq!((total(&per_event), total(&per_category), total(&single)), (51, 19, 3));
    }
}
