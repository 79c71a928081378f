#!/usr/bin/env bash
# Set everything up, then run the whole test suite (lint included). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check globaldns tests scripts
.venv/bin/ruff format --check globaldns tests scripts
# pytest exits 5 when it collected no tests: that is a failure here, like any other non-zero exit.
.venv/bin/python -m pytest "$@"
