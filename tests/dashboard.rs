//! The Grafana dashboard charts every metric the product exports, and only those.

use pcbridge::telemetry::Metrics;
use std::collections::BTreeSet;

fn exported() -> BTreeSet<String> {
    // Touch every labelled family so it is rendered, then read the names back.
    let m = Metrics::new();
    m.ingress_requests.with_label_values(&["x"]).inc();
    m.ingress_events.with_label_values(&["x"]).inc();
    m.verification_failures.with_label_values(&["x"]).inc();
    m.publish_duration.with_label_values(&["x", "ok"]).observe(0.1);
    m.certificate_cache.with_label_values(&["x"]).inc();
    m.certificate_fetches.with_label_values(&["x"]).inc();
    m.broker_ready.with_label_values(&["x"]).set(1);
    m.api_request_duration.with_label_values(&["x", "200"]).observe(0.1);
    m.token_requests.with_label_values(&["x", "ok"]).inc();
    m.worker_events.with_label_values(&["x", "ok"]).inc();
    m.worker_retries.with_label_values(&["x"]).inc();
    m.dead_letters.with_label_values(&["x"]).inc();
    m.consumer_lag.with_label_values(&["x", "0"]).set(1);
    m.ingress_request_duration.with_label_values(&["x"]).observe(0.1);
    m.worker_event_age.with_label_values(&["x"]).observe(0.1);
    m.forward_events.with_label_values(&["x", "delivered"]).inc();
    m.forward_requests.with_label_values(&["x", "2xx"]).inc();
    m.registration_checks.with_label_values(&["match"]).inc();
    m.registration_restores.with_label_values(&["restored"]).inc();
    m.render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|name| name.starts_with("pcbridge_"))
        .map(String::from)
        .collect()
}

#[test]
fn dashboard_covers_every_metric_and_invents_none() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/pcbridge.json"))
        .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    let used: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map(String::from).collect::<Vec<_>>())
        .filter(|w| w.starts_with("pcbridge_"))
        .map(|w| w.trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum").to_string())
        .collect();
    let exported = exported();
    assert_eq!(exported.len(), 25, "{exported:?}");
    // The process collector's families (Linux): the ones an operator charts.
    for family in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"] {
        assert!(Metrics::new().render().contains(family), "{family} is exported");
        assert!(exprs.iter().any(|e| e.contains(family)), "{family} is not on the dashboard");
    }
    let missing: Vec<_> = exported.difference(&used).collect();
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "metrics not on the dashboard: {missing:?}");
    assert!(unknown.is_empty(), "dashboard queries metrics that do not exist: {unknown:?}");
}
