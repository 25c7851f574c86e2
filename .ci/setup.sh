#!/usr/bin/env bash
# Makes a fresh machine ready for `make test`: the C build dependencies of rdkafka and,
# for the tests, a running RabbitMQ on 127.0.0.1:5672 (guest/guest) with its AMQP 1.0
# plugin enabled, and PostgreSQL on 127.0.0.1:5432. Idempotent: it does
# nothing where everything is already there.
#
#   .ci/setup.sh build      only the build dependencies
#   .ci/setup.sh services   only RabbitMQ and PostgreSQL
#   .ci/setup.sh            both
set -euo pipefail

what="${1:-all}"
apt_updated=""

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: $1 is missing and this script is not running as root." >&2
    echo "setup: run:  sudo apt-get update && sudo apt-get install -y $2" >&2
    exit 1
  fi
}

apt_install() {
  need_root "$1" "$*"
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$apt_updated" ]; then
    apt-get update -q
    apt_updated=1
  fi
  apt-get install -y -q --no-install-recommends "$@"
}

build_deps() {
  # librdkafka is built from source by rdkafka-sys (with OpenSSL for TLS/SASL).
  local missing=()
  command -v cc >/dev/null || missing+=(gcc)
  command -v make >/dev/null || missing+=(make)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  command -v perl >/dev/null || missing+=(perl)
  if command -v pkg-config >/dev/null && ! pkg-config --exists openssl; then missing+=(libssl-dev); fi
  if command -v pkg-config >/dev/null && ! pkg-config --exists zlib; then missing+=(zlib1g-dev); fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing build dependencies: ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

rabbit_port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

# The AMQP 1.0 broker kind is tested against RabbitMQ's AMQP 1.0 plugin, which ships
# with RabbitMQ and serves AMQP 1.0 on the same port once enabled (no restart).
amqp_1_0() {
  if rabbitmq-plugins list --enabled --minimal 2>/dev/null | grep -qx rabbitmq_amqp1_0; then
    echo "setup: RabbitMQ's AMQP 1.0 plugin is enabled"
    return
  fi
  need_root "RabbitMQ's AMQP 1.0 plugin" "rabbitmq-server  (then: sudo rabbitmq-plugins enable rabbitmq_amqp1_0)"
  echo "setup: enabling RabbitMQ's AMQP 1.0 plugin"
  rabbitmq-plugins enable rabbitmq_amqp1_0
}

postgres_port_open() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

# PostgreSQL holds the seen change keys of reconciliation; the tests use the local one
# (127.0.0.1:5432, user postgres, trust authentication as Debian's package sets it up
# for local connections).
postgres() {
  if postgres_port_open; then
    echo "setup: PostgreSQL is listening on 127.0.0.1:5432"
    return
  fi
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "setup: PostgreSQL is not installed; installing the Debian package"
    apt_install postgresql
  fi
  need_root "a running PostgreSQL" "postgresql  (then: sudo pg_ctlcluster --skip-systemctl-redirect <version> main start)"
  echo "setup: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
  for _ in $(seq 1 60); do
    if postgres_port_open; then
      echo "setup: PostgreSQL is up"
      return
    fi
    sleep 1
  done
  echo "setup: PostgreSQL did not start within 60 s; see /var/log/postgresql/" >&2
  exit 1
}

services() {
  postgres
  if rabbit_port_open; then
    echo "setup: RabbitMQ is listening on 127.0.0.1:5672"
    amqp_1_0
    return
  fi
  if ! command -v rabbitmq-server >/dev/null; then
    echo "setup: RabbitMQ is not installed; installing the Debian package"
    apt_install rabbitmq-server
  fi
  need_root "a running RabbitMQ" "rabbitmq-server  (then: sudo rabbitmq-server -detached)"
  echo "setup: starting RabbitMQ"
  rabbitmq-server -detached || true
  for _ in $(seq 1 120); do
    if rabbit_port_open; then
      rabbitmqctl await_startup >/dev/null 2>&1 || true
      echo "setup: RabbitMQ is up"
      amqp_1_0
      return
    fi
    sleep 1
  done
  echo "setup: RabbitMQ did not start within 120 s; see /var/log/rabbitmq/" >&2
  exit 1
}

# cargo-deny (licenses, bans, sources; advisories where GitHub is reachable), built
# from crates.io when missing.
deny() {
  if ! cargo deny --version >/dev/null 2>&1; then
    echo "installing cargo-deny from crates.io (a few minutes, once)"
    cargo install cargo-deny --locked
  fi
}

case "$what" in
  build) build_deps ;;
  deny) deny ;;
  services) services ;;
  all) build_deps; services ;;
  *) echo "usage: $0 [build|services|deny]" >&2; exit 2 ;;
esac
