#!/usr/bin/env bash
# Install what the local test servers need, then pre-fetch their jars.
#
#   .ci/install-system.sh PATH/TO/venv/bin/python
#
# Idempotent: apt-get runs only when a package is missing, and the jar fetch
# is skipped when the cache already holds them. Works unattended on a fresh
# Debian 12 machine (root, or a user with sudo).
#   postgresql  -> initdb/postgres for service.devservers.postgres
#   prometheus  -> prometheus + promtool for service.devservers.prometheus
#   java, maven -> Kafka and the MongoDB-protocol server (jars from Maven Central)
#   chromium    -> headless browser that renders the recipe report in a test
#                  (fonts-liberation: a Recommends that --no-install-recommends drops)
set -euo pipefail

PYTHON="${1:?usage: $0 PATH/TO/venv/bin/python}"
cd "$(dirname "$0")/.."

missing=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
{ command -v prometheus && command -v promtool; } >/dev/null || missing+=(prometheus)
command -v java >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v chromium >/dev/null || missing+=(chromium fonts-liberation)

if ((${#missing[@]})); then
    echo "install-system: installing ${missing[*]}"
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then sudo=(sudo); fi
    # Keep the packages' own services (a PostgreSQL cluster on 5432,
    # Prometheus on 9090) from starting: the tests start their own servers on
    # free ports. policy-rc.d exit 101 = "action forbidden"; only added when
    # the machine has none, and removed again afterwards.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        trap '"${sudo[@]}" rm -f "$policy"' EXIT
    fi
    apt_get=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
    "${apt_get[@]}" update
    "${apt_get[@]}" install -y --no-install-recommends "${missing[@]}"
else
    echo "install-system: postgresql, prometheus, java and maven already installed"
fi

"$PYTHON" -m service.devservers fetch
