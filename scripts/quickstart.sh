#!/usr/bin/env bash
# `npm run quickstart`, once scripts/setup.sh run has installed what the
# machine lacked (package.json runs it first): build, then `relevo up` in the
# foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run build --silent
exec node bin/relevo up
