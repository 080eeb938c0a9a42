#!/usr/bin/env bash
# Starts dockerd in the background when no Docker daemon answers (machines without systemd).
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null || { echo "dockerd not installed: apt-get install -y docker.io" >&2; exit 1; }
nohup dockerd >/var/log/taskray-dockerd.log 2>&1 &
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "dockerd did not come up; its log:" >&2
tail -n 40 /var/log/taskray-dockerd.log >&2
exit 1
