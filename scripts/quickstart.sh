#!/usr/bin/env bash
# `npm run quickstart`: from a fresh Debian 12 machine to a running embedded
# cluster. Installs what the machine lacks (Debian's postgresql-15 and
# redis-server) when it may, otherwise prints the exact command and stops;
# then npm ci (only when the lock file changed), build, and `relevo up`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x "${RELEVO_PG_BIN_DIR:-/usr/lib/postgresql/15/bin}/postgres" ] || missing+=(postgresql-15)
command -v "${RELEVO_REDIS_SERVER_BIN:-redis-server}" >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client-15)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "quickstart: installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
  else
    echo "quickstart: this machine lacks ${missing[*]}. Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 69
  fi
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run build --silent
exec node bin/relevo up
