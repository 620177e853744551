#!/usr/bin/env bash
# Install everything moldwatch needs on a fresh Debian machine, idempotently:
# a virtual environment with the package and its train, test and cluster extras (requirements.lock; the
# worker image installs only requirements-serve.lock), the Debian packages behind the local test
# servers (PostgreSQL, Prometheus), and the Kafka / MongoDB-protocol server jars.
# Re-running it is cheap: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/../.."

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: moldwatch needs Python 3.11 or 3.12 (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  python_bin=$(pick_python)
  echo "== creating .venv with $python_bin"
  "$python_bin" -m venv .venv
fi
stamp=.venv/.moldwatch-installed
lock=requirements.lock  # exact versions + sha256 of every dependency of .[train,test,cluster]; refresh: deploy/local/lock.sh
lock_platform() { sed -n 's/^# platform: //p' "$lock"; }
this_platform() {
  .venv/bin/python -c 'import platform, sys; print(sys.implementation.name, "%d.%d" % sys.version_info[:2], sys.platform, platform.machine())'
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$lock" -nt "$stamp" ]; then
  echo "== installing moldwatch with its train and test extras into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  if [ -f "$lock" ] && [ "$(lock_platform)" = "$(this_platform)" ]; then
    .venv/bin/python -m pip install --quiet --require-hashes -r "$lock"
  else
    echo "   ($lock pins $(lock_platform 2>/dev/null || echo nothing), this is $(this_platform): installing pyproject.toml's ranges)"
  fi
  # The project itself (editable), plus anything pyproject.toml gained since the lock was written.
  # PYTHONWARNINGS: setuptools prints its "Editable installation" notice as a warning banner; it
  # asks nothing of the user.
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install --quiet -e '.[train,test,cluster]'
  touch "$stamp"
fi
echo "== system packages and server jars"
bash .ci/install-system.sh .venv/bin/python
echo "== ready: .venv/bin/moldwatch --help"
