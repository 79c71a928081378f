#!/usr/bin/env bash
# Benchmarks globaldns with dnsperf (installed when missing); see scripts/bench.py --help.
#   scripts/bench.sh                         globaldns alone, every workload
#   scripts/bench.sh --vs 'GOMAXPROCS=1 go'  side by side with the Go reference server (built on first use)
#   scripts/bench.sh --against '--metrics none'   the cost of metrics
#   scripts/bench.sh --against '--workers 2' --only 'W1 A hits'   one process against two workers
#   scripts/bench.sh --quick                 a few seconds; the test suite runs this so the script cannot rot
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
exec .venv/bin/python scripts/bench.py "$@"
