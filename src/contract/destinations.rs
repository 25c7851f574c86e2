//! Destination naming (`docs/message-contract.md`): raw `{prefix}{EventName}`, enriched
//! `{prefix}{EventName}.enriched`, `{prefix}dead-letter`, and `{prefix}unrecognized` for an
//! event name that is not a safe destination name — the one place that decides what a
//! destination is called, on every broker.

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

/// Destination names, from the configured prefix.
#[derive(Debug, Clone)]
pub struct Destinations {
    prefix: String,
}

impl Destinations {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// The name an event's destinations are built from: the event name when safe,
    /// `unrecognized` otherwise (the event is signed by Microsoft, so it is kept).
    pub fn stem<'a>(&self, event_name: &'a str) -> &'a str {
        if is_safe_name(event_name) { event_name } else { UNRECOGNIZED }
    }

    /// `{prefix}{EventName}` (or `{prefix}unrecognized`).
    pub fn raw(&self, event_name: &str) -> String {
        format!("{}{}", self.prefix, self.stem(event_name))
    }

    /// `{prefix}{EventName}.enriched`.
    pub fn enriched(&self, event_name: &str) -> String {
        format!("{}{}.enriched", self.prefix, self.stem(event_name))
    }

    /// `{prefix}dead-letter`.
    pub fn dead_letter(&self) -> String {
        format!("{}dead-letter", self.prefix)
    }

    /// The raw destinations of every catalogue event plus `{prefix}unrecognized`.
    pub fn all_raw(&self) -> Vec<String> {
        all_stems().map(|n| self.raw(n)).collect()
    }

    /// What a worker consuming `stems` publishes to: their enriched destinations and the
    /// dead letter.
    pub fn outputs<S: AsRef<str>>(&self, stems: &[S]) -> Vec<String> {
        stems.iter().map(|s| self.enriched(s.as_ref())).chain([self.dead_letter()]).collect()
    }
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
}
