#!/usr/bin/env bash
# `npm run quickstart`, once scripts/setup.sh run has installed what the
# machine lacked (package.json runs it first): build, then `relevo up` in the
# foreground. With repository 1 in a bucket (RELEVO_REPO1_TYPE=s3) through
# scripts/quickstart-s3.mjs, which starts a development S3 server first when
# the endpoint is a free loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run build --silent
if [ "${RELEVO_REPO1_TYPE:-}" = "s3" ]; then
  exec node scripts/quickstart-s3.mjs
fi
exec node bin/relevo up
