#!/usr/bin/env bash
# Debian's PostgreSQL server, for the tests of the store on PostgreSQL: each test run starts a
# throwaway cluster of its own (harness/postgres_server.py); the package's own cluster is
# not used.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
    exit 0
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends postgresql
