#!/usr/bin/env bash
# Installs the system packages a make target needs, when they are missing.
# Usage: scripts/deps.sh build|test|bench
# As root it installs with apt-get; otherwise it prints the exact command to run.
set -euo pipefail

want=(cmake)
case "${1:-build}" in
  build) ;;
  test)  want+=(redis-server prometheus prometheus-alertmanager systemd chromium chromium-driver) ;;
  bench) want+=(nginx-light wrk redis-server valgrind iproute2 procps curl) ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac

# A package counts as present when the command it provides is on PATH.
declare -A cmd_of=(
  [cmake]=cmake [redis-server]=redis-server [prometheus]=promtool
  [prometheus-alertmanager]=prometheus-alertmanager [nginx-light]=nginx [wrk]=wrk
  [valgrind]=callgrind_control [iproute2]=ss [procps]=ps [systemd]=systemd-analyze
  [python3-pip]=pip3 [curl]=curl [chromium]=chromium [chromium-driver]=chromedriver
)
# Python packages the tests use: kubernetes-validate (the Kubernetes schemas, offline)
# and PyYAML, for the deployment files' tests; the official OpenAI client, for the AI
# traffic tests.
py_missing=()
if [ "${1:-build}" = test ]; then
  python3 -c 'import yaml' 2>/dev/null || py_missing+=(pyyaml)
  python3 -c 'import openai' 2>/dev/null || py_missing+=(openai)
  command -v kubernetes-validate >/dev/null 2>&1 || py_missing+=(kubernetes-validate)
  if [ ${#py_missing[@]} -gt 0 ] && ! python3 -m pip --version >/dev/null 2>&1; then
    want+=(python3-pip)
  fi
fi

missing=()
for pkg in "${want[@]}"; do
  command -v "${cmd_of[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done

install_python() {
  [ ${#py_missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing python packages: ${py_missing[*]}"
    python3 -m pip install -q --break-system-packages "${py_missing[@]}" 2>/dev/null \
      || python3 -m pip install -q "${py_missing[@]}"
  else
    echo "missing python packages: ${py_missing[*]}" >&2
    echo "install them with:  python3 -m pip install ${py_missing[*]}" >&2
    exit 1
  fi
}

if [ ${#missing[@]} -eq 0 ]; then
  install_python
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts some of these as services; the tests start their own on free ports.
  for svc in redis-server prometheus prometheus-alertmanager nginx; do
    if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
    service "$svc" stop >/dev/null 2>&1 || true
  done
  install_python
else
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
