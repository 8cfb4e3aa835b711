#!/usr/bin/env bash
# Generates the Prisma client offline. Every Prisma CLI command first tries to
# download a native schema engine; `generate` never runs it, it only checks that
# PRISMA_SCHEMA_ENGINE_BINARY names an existing file. We point it at a file that
# is not executable, so that a migrate command run by mistake fails loudly
# instead of "succeeding" without doing anything.
set -euo pipefail
cd "$(dirname "$0")/.."
export PRISMA_SCHEMA_ENGINE_BINARY="${PRISMA_SCHEMA_ENGINE_BINARY:-$PWD/node_modules/prisma/package.json}"
export PRISMA_HIDE_UPDATE_MESSAGE=1
exec node node_modules/prisma/build/index.js generate --no-hints "$@"
