//! The Kubernetes manifests, run rather than only validated: each overlay is rendered
//! with `kubectl kustomize`, and each Deployment's container is started from the real
//! `pcbridge` binary the way the kubelet would start it —
//! - the image's ENTRYPOINT/CMD/WORKDIR/USER/ENV (read from deploy/Dockerfile),
//!   overridden by the container's `command`/`args`/`workingDir`/`env`/`envFrom`, with the
//!   example Secret's keys as the Secret;
//! - the service-link variables the kubelet injects for every Service of the namespace,
//!   computed from the rendered Services;
//! - the ConfigMap's files at the volume's `mountPath`, the root filesystem read-only
//!   and the pod's user id (as root, inside a private mount namespace; otherwise the
//!   mount path is rewritten to a temporary directory and the user stays).
//!
//! Then its startup, readiness and liveness probes must pass within their budgets, and
//! after SIGTERM it must exit within `terminationGracePeriodSeconds`.
//!
//! What a cluster would resolve differently is substituted and said so: the broker's
//! Service address (the mock Kafka cluster, the local RabbitMQ) and its account.

mod common;

use pcbridge::contract::destinations::{Destinations, all_stems};
use serde::Deserialize;
use serde_json::Value;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The objects of a kustomization, as JSON values.
fn render(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("kubectl is needed (make test installs it: .ci/k8s.sh): {e}"));
    assert!(out.status.success(), "kubectl kustomize {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    yaml_documents(&String::from_utf8_lossy(&out.stdout))
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The service-link variables the kubelet gives every container of the namespace
/// (kubelet `envvars.FromServices`): `{NAME}_SERVICE_HOST`, `{NAME}_SERVICE_PORT`,
/// `{NAME}_SERVICE_PORT_{PORTNAME}`, `{NAME}_PORT` and `{NAME}_PORT_{port}_{PROTO}` with
/// its `_PROTO`, `_PORT` and `_ADDR`. Cluster IPs are made up; nothing connects to them.
fn service_links(objects: &[Value]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (i, svc) in of_kind(objects, "Service").into_iter().enumerate() {
        if svc["spec"]["clusterIP"] == "None" {
            continue;
        }
        let name = text(&svc["metadata"]["name"]).to_uppercase().replace('-', "_");
        let ip = format!("10.96.0.{}", 10 + i);
        let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        env.insert(format!("{name}_SERVICE_HOST"), ip.clone());
        env.insert(format!("{name}_SERVICE_PORT"), text(&first["port"]));
        let proto = |p: &Value| if p["protocol"].is_null() { "TCP".to_string() } else { text(&p["protocol"]) };
        env.insert(format!("{name}_PORT"), format!("{}://{ip}:{}", proto(first).to_lowercase(), text(&first["port"])));
        for p in &ports {
            let (port, proto) = (text(&p["port"]), proto(p));
            if let Some(port_name) = p["name"].as_str() {
                env.insert(format!("{name}_SERVICE_PORT_{}", port_name.to_uppercase().replace('-', "_")), port.clone());
            }
            let base = format!("{name}_PORT_{port}_{proto}");
            env.insert(base.clone(), format!("{}://{ip}:{port}", proto.to_lowercase()));
            env.insert(format!("{base}_PROTO"), proto.to_lowercase());
            env.insert(format!("{base}_PORT"), port.clone());
            env.insert(format!("{base}_ADDR"), ip.clone());
        }
    }
    env
}

/// The runtime stage of deploy/Dockerfile: what the image brings to a container.
#[derive(Debug, Default)]
struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    workdir: String,
    user: Option<(u32, u32)>,
    env: BTreeMap<String, String>,
    /// Where the image puts the binary (`COPY --from=… … /usr/local/bin/pcbridge`).
    binary: String,
}

fn image() -> Image {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("deploy/Dockerfile");
    // Continuation lines joined; the last FROM starts the runtime stage.
    let joined = dockerfile.replace("\\\n", " ");
    let lines: Vec<&str> = joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let start = lines.iter().rposition(|l| l.to_ascii_uppercase().starts_with("FROM ")).expect("a FROM line");
    let mut image = Image { workdir: "/".into(), ..Image::default() };
    let json_list = |rest: &str| -> Vec<String> {
        serde_json::from_str(rest.trim())
            .unwrap_or_else(|e| panic!("use the JSON form in the Dockerfile ({e}): {rest}"))
    };
    for line in &lines[start + 1..] {
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match instruction.to_ascii_uppercase().as_str() {
            "ENTRYPOINT" => image.entrypoint = json_list(rest),
            "CMD" => image.cmd = json_list(rest),
            "WORKDIR" => image.workdir = rest.trim().to_string(),
            "ENV" => {
                for pair in rest.split_whitespace() {
                    if let Some((k, v)) = pair.split_once('=') {
                        image.env.insert(k.to_string(), v.trim_matches('"').to_string());
                    }
                }
            }
            "USER" => {
                let ids: Vec<u32> = rest.trim().split(':').filter_map(|p| p.parse().ok()).collect();
                // distroless `nonroot` is 65532:65532.
                image.user = match ids.as_slice() {
                    [u, g] => Some((*u, *g)),
                    [u] => Some((*u, *u)),
                    _ if rest.trim().starts_with("nonroot") => Some((65532, 65532)),
                    _ => None,
                };
            }
            "COPY" if rest.contains("--from=") && rest.trim_end().ends_with("/pcbridge") => {
                image.binary = rest.split_whitespace().last().unwrap_or_default().to_string();
            }
            _ => {}
        }
    }
    assert!(!image.entrypoint.is_empty() && !image.binary.is_empty(), "Dockerfile runtime stage: {image:?}");
    image
}

/// Values for the example Secret's keys. A key the docs add needs a value here.
fn secret_value(key: &str) -> &'static str {
    match key {
        "PCBRIDGE_PARTNER_CENTER__TENANT_ID" => "00000000-0000-0000-0000-00000000000a",
        "PCBRIDGE_PARTNER_CENTER__CLIENT_ID" => "00000000-0000-0000-0000-00000000000b",
        "PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET" => "pod-test-client-secret",
        "PCBRIDGE_PARTNER_CENTER__REFRESH_TOKEN" => "pod-test-refresh-token",
        // The local RabbitMQ's account (see `broker_overrides`).
        "PCBRIDGE_RABBITMQ__PASSWORD" => "guest",
        "PCBRIDGE_KAFKA__PROPERTIES__SASL_PASSWORD" => "pod-test-sasl-password",
        // The local PostgreSQL (trust authentication: the password is not asked for).
        "PCBRIDGE_RECONCILE__STORE_URL" => "postgres://postgres@127.0.0.1:5432/postgres",
        "PCBRIDGE_RECONCILE__STORE_PASSWORD" => "pod-test-store-password",
        other => panic!("the example Secret lists {other}: give the pod test a value for it"),
    }
}

/// The example Secret (`deploy/kubernetes/examples/pcbridge-secrets.yaml`), every key
/// with a test value.
fn secret_fixture() -> (String, BTreeMap<String, String>) {
    let path = repo().join("deploy/kubernetes/examples/pcbridge-secrets.yaml");
    let docs = yaml_documents(&std::fs::read_to_string(&path).expect("example Secret"));
    let secret = docs.iter().find(|d| d["kind"] == "Secret").expect("a Secret in the example");
    let keys = secret["stringData"].as_object().expect("stringData");
    assert!(!keys.is_empty());
    (text(&secret["metadata"]["name"]), keys.keys().map(|k| (k.clone(), secret_value(k).to_string())).collect())
}

/// How a value naming a cluster Service reaches the same broker here.
struct Broker {
    kafka_bootstrap: String,
}

/// Cluster DNS names resolve to this machine's brokers; the RabbitMQ account is the
/// local one. Everything else is exactly what the manifests say.
fn broker_overrides(env: &mut BTreeMap<String, String>, broker: &Broker) {
    if env.contains_key("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS") {
        env.insert("PCBRIDGE_KAFKA__BOOTSTRAP_SERVERS".into(), broker.kafka_bootstrap.clone());
    }
    if let Some(url) = env.get("PCBRIDGE_RABBITMQ__URL").cloned() {
        let mut parsed = url::Url::parse(&url).expect("rabbitmq url");
        parsed.set_host(Some("127.0.0.1")).expect("host");
        parsed.set_port(Some(5672)).expect("port");
        env.insert("PCBRIDGE_RABBITMQ__URL".into(), parsed.to_string());
        env.insert("PCBRIDGE_RABBITMQ__USERNAME".into(), "guest".into());
        // The overlay's quorum queues, but 2 shards instead of 12: this machine's
        // single-node RabbitMQ 3.10 on 2 cores was seen to stop accepting connections
        // after a worker with some 300 quorum queues (25 raw destinations × 12 shards)
        // shut down (docs/operations.md, "RabbitMQ shards").
        env.insert("PCBRIDGE_RABBITMQ__SHARDS".into(), "2".into());
    }
}

/// The pod's environment, in the kubelet's order: the image's, then the Secret's
/// (`envFrom`) and the container's `env`, then the service links where not already set.
fn pod_env(
    container: &Value,
    image: &Image,
    objects: &[Value],
    secrets: &[(String, BTreeMap<String, String>)],
) -> BTreeMap<String, String> {
    // The documented example Secret of that name: what `envFrom` and `secretKeyRef` read.
    let secret = |name: &str| {
        secrets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, values)| values)
            .unwrap_or_else(|| panic!("Secret {name} is none of the documented examples"))
    };
    let mut env = BTreeMap::from([
        ("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("HOSTNAME".to_string(), "pcbridge-pod-test".to_string()),
    ]);
    env.extend(image.env.clone());
    for from in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = from["secretRef"]["name"].as_str() {
            env.extend(secret(name).clone());
        } else if from["configMapRef"].is_object() {
            let name = text(&from["configMapRef"]["name"]);
            let cm = of_kind(objects, "ConfigMap")
                .into_iter()
                .find(|c| c["metadata"]["name"] == name.as_str())
                .unwrap_or_else(|| panic!("envFrom ConfigMap {name} is not rendered"));
            for (k, v) in cm["data"].as_object().into_iter().flatten() {
                env.insert(k.clone(), text(v));
            }
        } else {
            panic!("an envFrom the pod test does not know: {from}");
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = text(&var["name"]);
        let value = if !var["valueFrom"].is_null() {
            let from = &var["valueFrom"];
            if let Some(key) = from["secretKeyRef"]["key"].as_str() {
                let name = text(&from["secretKeyRef"]["name"]);
                secret(&name)
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| panic!("secretKeyRef {key} is not in the example Secret {name}"))
            } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.name" => "pcbridge-pod-test".into(),
                    "metadata.namespace" => "pcbridge".into(),
                    "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
                    "spec.nodeName" => "node-1".into(),
                    other => panic!("fieldRef {other}"),
                }
            } else {
                panic!("a valueFrom the pod test does not know: {from}");
            }
        } else {
            text(&var["value"])
        };
        env.insert(name, value);
    }
    for (k, v) in service_links(objects) {
        env.entry(k).or_insert(v);
    }
    env
}

/// A probe's URL and budget: the named port resolved against the container's ports.
fn probe(container: &Value, which: &str) -> Option<(String, Duration, Duration)> {
    let p = &container[which];
    if p.is_null() {
        return None;
    }
    let get = &p["httpGet"];
    assert!(get.is_object(), "{which} is an httpGet probe");
    let port = match &get["port"] {
        Value::String(name) => container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|cp| cp["name"] == name.as_str())
            .map(|cp| text(&cp["containerPort"]))
            .unwrap_or_else(|| panic!("{which}: no container port named {name}")),
        other => text(other),
    };
    let secs = |key: &str, default: u64| p[key].as_u64().unwrap_or(default);
    let budget =
        Duration::from_secs(secs("initialDelaySeconds", 0) + secs("periodSeconds", 10) * secs("failureThreshold", 3));
    let timeout = Duration::from_secs(secs("timeoutSeconds", 1));
    Some((format!("http://127.0.0.1:{port}{}", text(&get["path"])), budget, timeout))
}

/// Probes like the kubelet: every period until success, failing after the budget.
async fn pass_probe(child: &mut Child, container: &Value, which: &str, log: &Path) -> Duration {
    let Some((url, budget, timeout)) = probe(container, which) else { panic!("{which} is not defined") };
    let period =
        Duration::from_secs(container[which]["periodSeconds"].as_u64().unwrap_or(10)).min(Duration::from_millis(500));
    let http = reqwest::Client::builder().timeout(timeout).build().expect("client");
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            return started.elapsed();
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the container exited ({status}) before its {which} passed:\n{}", read(log));
        }
        assert!(started.elapsed() < budget, "{which} {url} did not pass within {budget:?}:\n{}", read(log));
        tokio::time::sleep(period).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Pods here share one network namespace, so they run one at a time (their ports are
/// the manifests' own), across the test processes nextest starts.
struct PodLock {
    _held: std::fs::File,
}

impl PodLock {
    fn take() -> Self {
        let file = std::fs::File::create(std::env::temp_dir().join("pcbridge-pod-test.lock")).expect("lock file");
        // SAFETY: flock on a file descriptor we own; released when the file closes.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock");
        Self { _held: file }
    }
}

/// Runs every Deployment of `overlay` as its pod, one after the other. The caller holds
/// the [`PodLock`] (through its cleanup of the broker too: the pods share the manifests'
/// prefix and exchange).
async fn run_overlay(overlay: &str, broker: &Broker) {
    pcbridge::partner_center::install_crypto_provider();
    let objects = render(&repo().join("deploy/kubernetes/overlays").join(overlay));
    let image = image();
    let secret = secret_fixture();
    let deployments = of_kind(&objects, "Deployment");
    assert_eq!(deployments.len(), 2, "{overlay}: the ingress and the worker");
    let links = service_links(&objects);
    assert!(links.contains_key("PCBRIDGE_INGRESS_PORT"), "the Service pcbridge-ingress makes the kubelet inject links");
    for deployment in deployments {
        let name = text(&deployment["metadata"]["name"]);
        let pod = &deployment["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{name}: one container");
        let container = &containers[0];
        let mut env = pod_env(container, &image, &objects, std::slice::from_ref(&secret));
        broker_overrides(&mut env, broker);

        run_pod(overlay, &name, pod, container, &objects, &image, &env, links.len()).await;
    }
}

/// Runs one Deployment's pod as the kubelet would: its probes pass, Prometheus can
/// scrape it, and it exits 0 within the grace period after SIGTERM.
#[allow(clippy::too_many_arguments, reason = "a pod's whole description, as the kubelet reads it")]
async fn run_pod(
    overlay: &str,
    name: &str,
    pod: &Value,
    container: &Value,
    objects: &[Value],
    image: &Image,
    env: &BTreeMap<String, String>,
    links: usize,
) {
    let (mut child, config_dir, log) = start_container(name, pod, container, objects, image, env);

    let started = pass_probe(&mut child, container, "startupProbe", &log).await;
    let ready = pass_probe(&mut child, container, "readinessProbe", &log).await;
    pass_probe(&mut child, container, "livenessProbe", &log).await;
    // Prometheus scrapes the admin port.
    let admin = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "admin")
        .map(|p| text(&p["containerPort"]))
        .expect("admin port");
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.expect("metrics");
    assert!(metrics.status().is_success());
    assert!(metrics.text().await.unwrap_or_default().contains("pcbridge_build_info"));

    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
    let term = Instant::now();
    // SAFETY: signalling our own child, which `exec` made the pcbridge process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if term.elapsed() > grace {
            let _ = child.kill();
            panic!("{name}: still running {grace:?} after SIGTERM (the kubelet would SIGKILL):\n{}", read(&log));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stopped = term.elapsed();
    assert!(status.success(), "{name}: exit status {status} after SIGTERM:\n{}", read(&log));
    eprintln!(
        "{overlay}/{name}: started in {started:?}, ready {ready:?} later, exited {stopped:?} after SIGTERM ({}); \
             {} service-link variables injected",
        if is_root() { "ConfigMap mounted, root read-only, uid switched" } else { "ConfigMap path rewritten" },
        links
    );
    let _ = std::fs::remove_dir_all(&config_dir);
    let _ = std::fs::remove_file(&log);
}

/// Starts `container` of `pod` as the kubelet would (see the module doc), with `env` as
/// its whole environment; returns the process, its ConfigMap directory and its log file.
fn start_container(
    name: &str,
    pod: &Value,
    container: &Value,
    objects: &[Value],
    image: &Image,
    env: &BTreeMap<String, String>,
) -> (Child, PathBuf, PathBuf) {
    // The command line: `command` replaces the ENTRYPOINT, `args` the CMD.
    let entrypoint: Vec<String> = match container["command"].as_array() {
        Some(c) => c.iter().map(text).collect(),
        None => image.entrypoint.clone(),
    };
    let args: Vec<String> = match container["args"].as_array() {
        Some(a) => a.iter().map(text).collect(),
        None if container["command"].is_null() => image.cmd.clone(),
        None => Vec::new(),
    };
    let mut argv: Vec<String> = entrypoint.into_iter().chain(args).collect();
    assert_eq!(argv[0], image.binary, "{name}: the container runs the image's binary");
    argv[0] = env!("CARGO_BIN_EXE_pcbridge").to_string();
    let workdir = container["workingDir"].as_str().map_or(image.workdir.clone(), str::to_string);

    // The ConfigMap volume's files.
    let config_dir = tempdir(&format!("{name}-config"));
    let mut mounts = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("{name}: volume {} is not defined", m["name"]));
        let cm_name = text(&volume["configMap"]["name"]);
        assert!(!cm_name.is_empty(), "{name}: only ConfigMap volumes are run here: {volume}");
        let cm = of_kind(objects, "ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["name"] == cm_name.as_str())
            .unwrap_or_else(|| panic!("{name}: ConfigMap {cm_name} is not rendered"));
        for (file, content) in cm["data"].as_object().expect("ConfigMap data") {
            std::fs::write(config_dir.join(file), text(content)).expect("write ConfigMap file");
        }
        mounts.push(text(&m["mountPath"]));
    }
    assert_eq!(mounts.len(), 1, "{name}: the config volume");
    let mount_path = mounts.remove(0);
    let read_only_root = container["securityContext"]["readOnlyRootFilesystem"] == true;
    let uid = pod["securityContext"]["runAsUser"].as_u64().map(|u| u as u32).or(image.user.map(|u| u.0));
    let gid = pod["securityContext"]["runAsGroup"].as_u64().map(|g| g as u32).or(image.user.map(|u| u.1));

    for port in container["ports"].as_array().into_iter().flatten() {
        let p = text(&port["containerPort"]);
        assert!(
            std::net::TcpListener::bind(format!("0.0.0.0:{p}")).is_ok(),
            "port {p} is in use on this machine: the pod test needs the manifests' own ports"
        );
    }

    let log = config_dir.with_extension("log");
    let stderr = std::fs::File::create(&log).expect("log file");
    let mut cmd;
    if is_root() {
        // A private mount namespace: the ConfigMap at its mountPath (read-only, as
        // the kubelet mounts it), the root filesystem read-only, the pod's user.
        std::fs::create_dir_all(&mount_path).expect("mount point");
        let mut script = String::from("set -e; mount --bind \"$CONFIG_DIR\" \"$MOUNT_PATH\"; ");
        script.push_str("mount -o remount,bind,ro \"$MOUNT_PATH\"; ");
        if read_only_root {
            script.push_str("mount -o remount,bind,ro /; ");
        }
        script.push_str("cd \"$WORKDIR\"; ");
        match (uid, gid) {
            (Some(u), Some(g)) => {
                script.push_str(&format!("exec /usr/bin/setpriv --reuid {u} --regid {g} --clear-groups -- \"$@\""))
            }
            _ => script.push_str("exec \"$@\""),
        }
        cmd = Command::new("/usr/bin/unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c", &script, "sh"]).args(&argv);
    } else {
        eprintln!("{name}: not root: the ConfigMap path is rewritten and the user id kept");
        let rewritten: Vec<String> =
            argv.iter().map(|a| a.replace(&mount_path, &config_dir.display().to_string())).collect();
        cmd = Command::new(&rewritten[0]);
        cmd.args(&rewritten[1..]).current_dir(if Path::new(&workdir).exists() { workdir.clone() } else { "/".into() });
    }
    // Only the pod's environment (the mount script's three variables have no
    // PCBRIDGE_ prefix, so they stay out of the configuration).
    cmd.env_clear().envs(env);
    if is_root() {
        cmd.env("CONFIG_DIR", &config_dir).env("MOUNT_PATH", &mount_path).env("WORKDIR", &workdir);
    }
    // Both streams to the log, as the kubelet keeps a container's output.
    let stdout = stderr.try_clone().expect("log file");
    let child = cmd.stdout(stdout).stderr(stderr).spawn().expect("start the container");
    (child, config_dir, log)
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pcbridge-pod-{}-{name}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // The pod's user must read it, as it reads a ConfigMap volume.
    let _ = std::process::Command::new("chmod").arg("0755").arg(&dir).status();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_overlay_pods_run_as_the_kubelet_runs_them() {
    let mock = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
    let _lock = PodLock::take();
    run_overlay("kafka", &Broker { kafka_bootstrap: mock.bootstrap_servers() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_overlay_pods_run_as_the_kubelet_runs_them() {
    let _lock = PodLock::take();
    run_overlay("rabbitmq", &Broker { kafka_bootstrap: String::new() }).await;
    // The pods used the manifests' own prefix and exchange; leave the broker as found.
    let conn = common::bus::rabbitmq::connect().await;
    let config = pcbridge::config::Config::default();
    common::bus::rabbitmq::cleanup(&conn, &config, &common::bus::output_queues(&config)).await;
}

/// The example Secret of components/forwarding (`examples/pcbridge-forward.yaml`): its
/// receivers, as written (their URLs are placeholders the forwarder never reaches here).
fn forward_secret_fixture() -> (String, BTreeMap<String, String>) {
    let path = repo().join("deploy/kubernetes/examples/pcbridge-forward.yaml");
    let docs = yaml_documents(&std::fs::read_to_string(&path).expect("example Secret"));
    let secret = docs.iter().find(|d| d["kind"] == "Secret").expect("a Secret in the example");
    let keys = secret["stringData"].as_object().expect("stringData");
    (text(&secret["metadata"]["name"]), keys.iter().map(|(k, v)| (k.clone(), text(v))).collect())
}

/// components/forwarding's two Deployments, each run as its pod: the forwarder (the
/// worker's broker environment, its receivers from the example Secret) and the
/// registration guard (one replica; Partner Center's registration API is the simulator,
/// with the simulator's app). Both pass their probes and drain on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_pods_run_as_the_kubelet_runs_them() {
    pcbridge::partner_center::install_crypto_provider();
    let objects = render(&repo().join("deploy/kubernetes/overlays/rabbitmq-full"));
    let image = image();
    let secrets = [secret_fixture(), forward_secret_fixture()];
    let sim = pcbridge::dev::simulator::Simulator::start(
        pcbridge::dev::pki::Pki::generate().expect("pki"),
        pcbridge::dev::simulator::Options::default(),
    )
    .await
    .expect("simulator");
    let links = service_links(&objects);
    let _lock = PodLock::take();
    for name in ["pcbridge-forward", "pcbridge-register-watch"] {
        let deployment = of_kind(&objects, "Deployment")
            .into_iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("components/forwarding renders {name}"));
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let mut env = pod_env(container, &image, &objects, &secrets);
        assert_eq!(env.get("PCBRIDGE_BROKER__KIND").map(String::as_str), Some("rabbitmq"), "the worker's broker env");
        broker_overrides(&mut env, &Broker { kafka_bootstrap: String::new() });
        if name == "pcbridge-forward" {
            assert!(env.contains_key("PCBRIDGE_FORWARD__RECEIVERS__CIPP__URL"), "the receivers' Secret");
        } else {
            assert_eq!(deployment["spec"]["replicas"], 1, "one guard");
            for (key, value) in [
                ("PCBRIDGE_PARTNER_CENTER__BASE_URL", sim.base_url().to_string()),
                ("PCBRIDGE_PARTNER_CENTER__TOKEN_BASE_URL", sim.base_url().to_string()),
                ("PCBRIDGE_PARTNER_CENTER__TENANT_ID", pcbridge::dev::simulator::TENANT_ID.to_string()),
                ("PCBRIDGE_PARTNER_CENTER__CLIENT_ID", pcbridge::dev::simulator::CLIENT_ID.to_string()),
                ("PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET", pcbridge::dev::simulator::CLIENT_SECRET.to_string()),
            ] {
                env.insert(key.to_string(), value);
            }
        }
        run_pod("rabbitmq-full", name, pod, container, &objects, &image, &env, links.len()).await;
    }
    // The forwarder's copies used the manifests' own prefix and exchange: leave the
    // broker as found.
    let conn = common::bus::rabbitmq::connect().await;
    let mut config = pcbridge::config::Config::default();
    config.rabbitmq.shards = 2;
    let receiver = pcbridge::config::ReceiverConfig::default();
    config.forward.receivers.insert("cipp".into(), receiver);
    common::bus::rabbitmq::cleanup(&conn, &config, &common::bus::output_queues(&config)).await;
}

/// components/reconcile's CronJob, its container run as the kubelet runs a Job's pod:
/// the worker's broker environment (copied by the component), the Secret's store URL,
/// the ConfigMap. It must finish within `activeDeadlineSeconds` and exit 0, having
/// published the change Partner Center did not deliver. Substituted besides the broker:
/// Partner Center's and Entra ID's hosts are the stand-in, with the stand-in's app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_cronjob_runs_as_the_kubelet_runs_it() {
    pcbridge::partner_center::install_crypto_provider();
    let objects = render(&repo().join("deploy/kubernetes/overlays/rabbitmq-full"));
    let jobs = of_kind(&objects, "CronJob");
    assert_eq!(jobs.len(), 1, "components/reconcile renders one CronJob");
    let job = jobs[0];
    let pod = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let image = image();
    let secret = secret_fixture();
    let mut env = pod_env(container, &image, &objects, std::slice::from_ref(&secret));
    assert_eq!(env.get("PCBRIDGE_BROKER__KIND").map(String::as_str), Some("rabbitmq"), "the worker's broker env");
    broker_overrides(&mut env, &Broker { kafka_bootstrap: String::new() });
    let api = common::pc_api::PcApi::start().await;
    for (key, value) in [
        ("PCBRIDGE_PARTNER_CENTER__BASE_URL", api.base.clone()),
        ("PCBRIDGE_PARTNER_CENTER__TOKEN_BASE_URL", api.base.clone()),
        ("PCBRIDGE_PARTNER_CENTER__GRAPH_BASE_URL", api.base.clone()),
        ("PCBRIDGE_PARTNER_CENTER__REFERRALS_BASE_URL", api.base.clone()),
        ("PCBRIDGE_PARTNER_CENTER__REFRESH_TOKEN", common::pc_api::REFRESH_TOKEN.to_string()),
        ("PCBRIDGE_PARTNER_CENTER__CLIENT_ID", common::pc_api::CLIENT_ID.to_string()),
        ("PCBRIDGE_PARTNER_CENTER__CLIENT_SECRET", common::pc_api::CLIENT_SECRET.to_string()),
    ] {
        env.insert(key.to_string(), value);
    }
    // One change in the audit log, new to the store (its id is this run's own).
    let id = format!("podtest-{}", uuid::Uuid::new_v4().simple());
    let at = time::OffsetDateTime::now_utc() - time::Duration::hours(3);
    api.put_audit(vec![serde_json::json!({
        "id": id,
        "operationType": "update_subscription",
        "operationDate": at.format(&time::format_description::well_known::Rfc3339).expect("time"),
        "operationStatus": "succeeded",
        "resourceNewValue": serde_json::json!({"id": "s-1"}).to_string(),
        "customerId": "c-1",
    })]);

    let _lock = PodLock::take();
    let (mut child, config_dir, log) = start_container("pcbridge-reconcile", pod, container, &objects, &image, &env);
    let deadline =
        Duration::from_secs(job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"].as_u64().unwrap_or(600));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > deadline.min(Duration::from_secs(60)) {
            let _ = child.kill();
            panic!("the reconcile job did not finish:\n{}", read(&log));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = read(&log);
    assert!(status.success(), "exit status {status}:\n{output}");
    assert!(output.contains("found 1 · published 1"), "{output}");
    eprintln!("reconcile job: finished in {:?}: {}", started.elapsed(), output.lines().last().unwrap_or_default());

    // Leave the broker and the store as found.
    let conn = common::bus::rabbitmq::connect().await;
    let config = pcbridge::config::Config::default();
    common::bus::rabbitmq::cleanup(&conn, &config, &common::bus::output_queues(&config)).await;
    let (client, connection) =
        tokio_postgres::connect("postgres://postgres@127.0.0.1:5432/postgres", tokio_postgres::NoTls)
            .await
            .expect("postgres");
    tokio::spawn(connection);
    let table = pcbridge::config::ReconcileConfig::default().table;
    client
        .execute(&format!("DELETE FROM {table} WHERE change_key = $1"), &[&format!("audit:{id}")])
        .await
        .expect("delete");
    let _ = std::fs::remove_dir_all(&config_dir);
    let _ = std::fs::remove_file(&log);
}

/// The RabbitMQ autoscaler counts the raw queues' shards only: dead letters that nobody
/// consumes, and enriched queues that downstream consumes, must not scale the worker. It
/// never adds replicas beyond the shard count, which would only stand by.
#[test]
fn keda_rabbitmq_trigger_counts_raw_queues_only() {
    let path = repo().join("deploy/kubernetes/components/keda-rabbitmq/scaledobject.yaml");
    let docs = yaml_documents(&std::fs::read_to_string(&path).expect("keda-rabbitmq ScaledObject"));
    let scaled = docs.iter().find(|d| d["kind"] == "ScaledObject").expect("a ScaledObject");
    let pattern = text(&scaled["spec"]["triggers"][0]["metadata"]["queueName"]);
    assert_eq!(scaled["spec"]["triggers"][0]["metadata"]["useRegex"], "true");
    let re = regex::Regex::new(&pattern).expect("the queue pattern is a regular expression");
    // The prefix the pods run with: the ConfigMap's `broker.prefix`, else the default.
    let config: toml::Table = std::fs::read_to_string(repo().join("deploy/kubernetes/base/config.toml"))
        .expect("base config.toml")
        .parse()
        .expect("base config.toml is TOML");
    let prefix = config
        .get("broker")
        .and_then(|b| b.get("prefix"))
        .and_then(|p| p.as_str())
        .map_or(pcbridge::config::Config::default().broker.prefix, str::to_string);
    let shards = config
        .get("rabbitmq")
        .and_then(|r| r.get("shards"))
        .and_then(|s| s.as_integer())
        .map_or(pcbridge::config::Config::default().rabbitmq.shards, |s| s as u16);
    let d = Destinations::new(prefix);
    for stem in all_stems() {
        let stem = d.stem(stem);
        for shard in pcbridge::contract::shards::shard_names(&d.raw(stem), shards) {
            assert!(re.is_match(&shard), "{pattern} misses the shard queue {shard}");
        }
        assert!(!re.is_match(&d.enriched(stem)), "{pattern} counts the enriched queue {}", d.enriched(stem));
    }
    assert!(!re.is_match(&d.dead_letter()), "{pattern} counts the dead letters");
    let max = scaled["spec"]["maxReplicaCount"].as_u64().expect("maxReplicaCount");
    assert!(
        max <= u64::from(shards),
        "maxReplicaCount {max} is above rabbitmq.shards {shards}: the rest would stand by"
    );
}
