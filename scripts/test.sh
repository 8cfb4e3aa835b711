#!/usr/bin/env bash
# `npm test`, once scripts/setup.sh test has installed what the machine lacked
# (package.json runs it first): build, typecheck, lint, the compose file, then
# the suite. Arguments go to Jest: `npm test -- test/unit` runs the unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "test: $(node --version) ($(command -v node)), npm $(npm --version)"
npm run build --silent
npm run typecheck --silent
npm run lint --silent
# docker-compose.yml, validated by the Compose implementation itself.
docker-compose --env-file .env.example -f docker-compose.yml config -q
exec node node_modules/jest/bin/jest.js --runInBand "$@"
