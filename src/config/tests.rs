//! Unit tests of loading and validation.

use super::*;
use figment::providers::Env;
use std::io::Write;

fn file(text: &str) -> tempfile_lite::TempFile {
    tempfile_lite::TempFile::with(text)
}

mod tempfile_lite {
    /// A file in the temp dir, removed on drop (keeps tests free of a tempfile dependency).
    pub struct TempFile(pub std::path::PathBuf);
    impl TempFile {
        pub fn with(text: &str) -> Self {
            let path = std::env::temp_dir().join(format!("pcbridge-config-{}.toml", uuid::Uuid::new_v4()));
            std::fs::write(&path, text).map(|_| Self(path)).unwrap_or_else(|e| panic!("temp file: {e}"))
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn env(vars: &[(&str, &str)]) -> Env {
    // Figment's Env reads the process environment; tests run in parallel, so each test
    // uses its own prefix and only its own variables.
    let prefix = format!("PCBT{}_", uuid::Uuid::new_v4().simple().to_string()[..8].to_uppercase());
    for (k, v) in vars {
        // SAFETY: each test writes only variables under its own unique prefix.
        unsafe { std::env::set_var(format!("{prefix}{k}"), v) };
    }
    Env::prefixed(&prefix)
}

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn file_then_env_override() {
    let f = file("[broker]\nkind = \"rabbitmq\"\nprefix = \"pc.\"\n[ingress]\nmax_body_bytes = 10\n");
    let c = Config::load_with_env(&f.0, true, env(&[("BROKER__PREFIX", "other."), ("LOG_FORMAT", "json")])).unwrap();
    assert_eq!(c.broker.kind, BrokerKind::Rabbitmq);
    assert_eq!(c.broker.prefix, "other.");
    assert_eq!(c.ingress.max_body_bytes, 10);
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn bad_key_is_named() {
    let f = file("[ingress]\nlisten = \"not an address\"\n");
    let err = Config::load_with_env(&f.0, true, env(&[])).unwrap_err().to_string();
    assert!(err.contains("ingress.listen"), "{err}");
    let f = file("[ingress]\nlisen = \"0.0.0.0:1\"\n");
    let err = Config::load_with_env(&f.0, true, env(&[])).unwrap_err().to_string();
    assert!(err.contains("lisen"), "{err}");
    let err = Config::load_with_env(Path::new("/nonexistent.toml"), false, env(&[("BROKER__KIND", "nats")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("broker.kind"), "{err}");
}

#[test]
fn kubernetes_service_links_are_not_configuration() {
    // The Services `pcbridge-ingress` and `pcbridge-worker` make the kubelet inject these.
    let links = [
        ("INGRESS_PORT", "tcp://10.0.0.1:80"),
        ("INGRESS_SERVICE_HOST", "10.0.0.1"),
        ("INGRESS_SERVICE_PORT", "80"),
        ("INGRESS_SERVICE_PORT_WEBHOOK", "80"),
        ("INGRESS_PORT_80_TCP", "tcp://10.0.0.1:80"),
        ("INGRESS_PORT_80_TCP_ADDR", "10.0.0.1"),
        ("INGRESS_PORT_80_TCP_PORT", "80"),
        ("INGRESS_PORT_80_TCP_PROTO", "tcp"),
        ("WORKER_PORT", "tcp://10.0.0.2:9090"),
        ("WORKER_SERVICE_HOST", "10.0.0.2"),
    ];
    let f = file("");
    let c = Config::load_with_env(&f.0, true, env(&links)).unwrap();
    assert_eq!(c.ingress.listen, IngressConfig::default().listen);
    // A typo in a real key (it has `__`) is still refused, naming the key.
    let err = Config::load_with_env(&f.0, true, env(&[("INGRESS__LISEN", "0.0.0.0:1")])).unwrap_err().to_string();
    assert!(err.contains("lisen"), "{err}");
}

#[test]
fn validation_names_the_key() {
    let mut c = Config::default();
    c.broker.prefix = "bad prefix/".into();
    assert!(c.validate().unwrap_err().to_string().contains("broker.prefix"));
    let mut c = Config::default();
    c.signature.trusted_certificate_url_prefixes = vec!["ftp://x/".into()];
    assert!(c.validate().unwrap_err().to_string().contains("trusted_certificate_url_prefixes"));
}

#[test]
fn secrets_are_refused_in_the_file_but_taken_from_env() {
    let f = file("[rabbitmq]\npassword = \"hunter2\"\n");
    let err = Config::load_with_env(&f.0, true, env(&[])).unwrap_err().to_string();
    assert!(err.contains("PCBRIDGE_RABBITMQ__PASSWORD") && !err.contains("hunter2"), "{err}");
    let f = file("[kafka.properties]\n\"sasl.password\" = \"x\"\n");
    let err = Config::load_with_env(&f.0, true, env(&[])).unwrap_err().to_string();
    assert!(err.contains("PCBRIDGE_KAFKA__PROPERTIES__SASL_PASSWORD"), "{err}");
    let f = file("[rabbitmq]\nurl = \"amqp://u:p@h/%2f\"\n");
    assert!(Config::load_with_env(&f.0, true, env(&[])).is_err());

    let f = file("[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n");
    let c = Config::load_with_env(
        &f.0,
        true,
        env(&[("KAFKA__PROPERTIES__SASL_PASSWORD", "s3cret"), ("RABBITMQ__PASSWORD", "pw")]),
    )
    .unwrap();
    let props = c.kafka.normalized_properties();
    assert_eq!(props.get("sasl.password").map(String::as_str), Some("s3cret"));
    assert_eq!(props.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
    assert_eq!(c.rabbitmq_password().unwrap().expose(), "pw");
    assert!(!format!("{c:?}").contains("\"pw\""));
    assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
}

#[test]
fn password_file_is_read() {
    let mut pw = std::env::temp_dir();
    pw.push(format!("pcbridge-pw-{}", uuid::Uuid::new_v4()));
    std::fs::File::create(&pw).and_then(|mut f| f.write_all(b"from-file\n")).unwrap();
    let mut c = Config::default();
    c.rabbitmq.password_file = pw.display().to_string();
    c.validate().unwrap();
    assert_eq!(c.rabbitmq_password().unwrap().expose(), "from-file");
    let _ = std::fs::remove_file(pw);
}

#[test]
fn urls_are_redacted() {
    assert_eq!(redact_url("amqp://u:p@h:5672/%2f"), "amqp://u:***@h:5672/%2f");
    assert_eq!(redact_url("amqp://h:5672/%2f"), "amqp://h:5672/%2f");
}

#[test]
fn numbers_and_booleans_are_accepted_where_strings_are_expected() {
    let f = file("[kafka.properties]\n\"linger.ms\" = 5\n\"enable.ssl.certificate.verification\" = false\n");
    let c = Config::load_with_env(
        &f.0,
        true,
        env(&[("KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000"), ("RABBITMQ__PASSWORD", "12345")]),
    )
    .unwrap();
    let props = c.kafka.normalized_properties();
    assert_eq!(props.get("linger.ms").map(String::as_str), Some("5"));
    assert_eq!(props.get("enable.ssl.certificate.verification").map(String::as_str), Some("false"));
    assert_eq!(props.get("session.timeout.ms").map(String::as_str), Some("6000"));
    assert_eq!(c.rabbitmq_password().unwrap().expose(), "12345");
}
