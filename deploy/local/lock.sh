#!/usr/bin/env bash
# Refresh requirements.lock: resolve pyproject.toml (with the test extra) afresh, as pip would
# install it into an empty environment, and pin every package with its sha256.
#   deploy/local/lock.sh            # needs .venv (deploy/local/setup.sh); takes a minute or two
set -euo pipefail
cd "$(dirname "$0")/../.."
report=$(mktemp)
trap 'rm -f "$report"' EXIT
.venv/bin/python -m pip install --quiet --dry-run --ignore-installed --report "$report" -e '.[test]'
.venv/bin/python deploy/local/lock.py "$report" requirements.lock
