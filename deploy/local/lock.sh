#!/usr/bin/env bash
# Refresh both locks: resolve pyproject.toml afresh, as pip would install it into an empty
# environment, and pin every package with its sha256.
#   requirements.lock        .[train,test,cluster]  setup.sh, .ci/run and the tests; the Dockerfile's train image
#   requirements-serve.lock  .  (base)      the Dockerfile's worker image: no TensorFlow, scikit-learn, ...
# The serving lock is resolved under the full lock's versions, so the worker image runs exactly
# what the tests ran (its packages are a subset of requirements.lock, same versions and hashes).
#   deploy/local/lock.sh            # needs .venv (deploy/local/setup.sh); takes a minute or two
set -euo pipefail
cd "$(dirname "$0")/../.."
full=$(mktemp) serve=$(mktemp) pins=$(mktemp)
trap 'rm -f "$full" "$serve" "$pins"' EXIT
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

pip install --quiet --dry-run --ignore-installed --report "$full" -e '.[train,test,cluster]'
.venv/bin/python deploy/local/lock.py "$full" requirements.lock --pins "$pins" \
  --what "with the train, test and cluster extras" --used-by "setup.sh, .ci/run and the Dockerfile's train target"

pip install --quiet --dry-run --ignore-installed --report "$serve" --constraint "$pins" -e .
.venv/bin/python deploy/local/lock.py "$serve" requirements-serve.lock \
  --what "for serving: the base install, no extras" --used-by "the Dockerfile's worker image"
