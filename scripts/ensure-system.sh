#!/usr/bin/env bash
# Install (as root, with apt) what `make demo` and `make test` need from the system, or say
# exactly what to install. Usage: ensure-system.sh python|services
set -euo pipefail

need_apt=()
case "${1:-services}" in
  python)
    python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null \
      || need_apt+=(python3)
    python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
    ;;
  services)
    command -v mosquitto >/dev/null 2>&1 || need_apt+=(mosquitto)
    command -v mosquitto_passwd >/dev/null 2>&1 || need_apt+=(mosquitto)
    ;;
  *) echo "usage: $0 python|services" >&2; exit 2 ;;
esac

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing with apt: ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "missing system packages: ${need_apt[*]}" >&2
    echo "install them with: sudo apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
fi
