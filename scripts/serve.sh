#!/usr/bin/env bash
# Quick start: set everything up, then serve examples/ on 127.0.0.1:5353 (UDP and TCP).
# Try:  dig @127.0.0.1 -p 5353 httpbin.bar.global
# Extra flags are passed on, e.g. scripts/serve.sh --log-queries
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/globaldns serve --listen 127.0.0.1:5353 --service-entries examples \
  --health 127.0.0.1:8080 --ready 127.0.0.1:8181 --metrics 127.0.0.1:9153 "$@"
