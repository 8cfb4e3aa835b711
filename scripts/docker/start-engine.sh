#!/bin/bash
# Starts a Docker engine when none answers (Debian 12, root, no systemd):
# installs Debian's docker.io when dockerd is missing, runs dockerd with the
# vfs storage driver (the one that works on these machines), waits for it.
set -euo pipefail
LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
if docker info >/dev/null 2>&1; then echo "docker engine already up"; exit 0; fi
if ! command -v dockerd >/dev/null; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
# setsid + nohup: detach from the CI shell's process group; dockerd spawns its own containerd
setsid nohup dockerd --storage-driver=vfs >"$LOG" 2>&1 < /dev/null &
echo $! > /tmp/dockerd.pid
for i in $(seq 1 300); do
	docker info >/dev/null 2>&1 && { echo "dockerd up after ~$((i/10)).$((i%10))s (pid $(cat /tmp/dockerd.pid))"; exit 0; }
	kill -0 "$(cat /tmp/dockerd.pid)" 2>/dev/null || { echo "dockerd died:"; tail -20 "$LOG"; exit 1; }
	sleep 0.1
done
echo "dockerd did not answer within 30s"; tail -20 "$LOG"; exit 1
