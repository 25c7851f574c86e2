//! The shipped `config.toml` documents every key with its real default.

use pcbridge::config::Config;
use std::path::Path;

fn keys(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            if v.is_object() && path != "kafka.properties" {
                keys(v, &path, out);
            } else {
                out.push(path);
            }
        }
    }
}

#[test]
fn config_toml_matches_the_defaults() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")).expect("config.toml");
    let from_file: toml::Value = toml::from_str(&text).expect("config.toml is TOML");
    let from_file = serde_json::to_value(&from_file).expect("json");
    let mut defaults = serde_json::to_value(Config::default()).expect("json");
    // Secrets are deliberately absent from the file.
    defaults["rabbitmq"].as_object_mut().expect("table").remove("password");
    for secret in ["client_secret", "refresh_token"] {
        defaults["partner_center"].as_object_mut().expect("table").remove(secret);
    }
    let (mut file_keys, mut default_keys) = (Vec::new(), Vec::new());
    keys(&from_file, "", &mut file_keys);
    keys(&defaults, "", &mut default_keys);
    file_keys.sort();
    default_keys.sort();
    assert_eq!(file_keys, default_keys, "config.toml must list every key");
    assert_eq!(from_file, defaults, "config.toml must show the built-in defaults");
    // And it loads and validates as it is.
    Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"), true).expect("valid");
}

#[test]
fn every_key_has_a_comment() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")).expect("config.toml");
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with('[') {
            continue;
        }
        let commented = lines[..i]
            .iter()
            .rev()
            .take_while(|l| !l.trim().is_empty() && !l.trim().starts_with('['))
            .any(|l| l.trim().starts_with('#'));
        assert!(commented, "config.toml line {} has no comment above it: {t}", i + 1);
    }
}

#[test]
fn kubernetes_config_is_valid_and_drains_within_the_grace_period() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/base");
    let config = Config::load(&dir.join("config.toml"), true).expect("the ConfigMap's config.toml is valid");
    assert_eq!(config.log.format, pcbridge::config::LogFormat::Json);
    for role in ["ingress", "worker"] {
        let manifest = std::fs::read_to_string(dir.join(format!("{role}-deployment.yaml"))).expect("deployment");
        let grace: u64 = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("terminationGracePeriodSeconds");
        assert!(
            grace * 1000 > config.shutdown.drain_deadline_ms,
            "{role}: grace {grace}s must exceed the drain deadline"
        );
        assert!(manifest.contains("/readyz") && manifest.contains("/healthz"), "{role}: probes on the admin port");
    }
}

/// `section.key = value` for every key of the shipped config.toml, as written there.
fn written_keys() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")).expect("config.toml");
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            out.push((format!("{section}.{}", k.trim()), v.trim().to_string()));
        }
    }
    out
}

#[test]
fn reference_lists_every_key_with_its_default() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"))
        .expect("docs/configuration.md");
    let written = written_keys();
    assert!(written.len() > 50, "config.toml was read: {} keys", written.len());
    for (key, value) in &written {
        let row = format!("| `{key}` | `{value}` |");
        assert!(readme.contains(&row), "docs/configuration.md's reference lacks or misstates {row}");
    }
    // A receiver's keys (a table per receiver, none by default), each documented.
    let receiver = serde_json::to_value(pcbridge::config::ReceiverConfig::default()).expect("json");
    let receiver_keys: Vec<String> =
        receiver.as_object().expect("table").keys().map(|k| format!("forward.receivers.NAME.{k}")).collect();
    for key in &receiver_keys {
        assert!(readme.contains(&format!("| `{key}` |")), "docs/configuration.md lacks {key}");
    }
    // And the table names no key that does not exist.
    let start = readme.find("## Reference").expect("a reference section");
    for line in readme[start..].lines().skip(1).take_while(|l| !l.starts_with("## ")) {
        if let Some(key) = line.strip_prefix("| `").and_then(|l| l.split('`').next())
            && key.contains('.')
            && key != "kafka.properties.*"
            && !receiver_keys.iter().any(|k| k == key)
        {
            assert!(
                written.iter().any(|(k, _)| k == key),
                "docs/configuration.md documents {key}, which config.toml does not have"
            );
        }
    }
}
