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
    # tests/firmware_bridge: a Modbus RTU line as a pseudo-terminal pair
    command -v socat >/dev/null 2>&1 || need_apt+=(socat)
    # tests/fleet: Debian hosts booted with systemd-nspawn on private network namespaces,
    # reached by Ansible over SSH
    command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
    command -v systemd-nspawn >/dev/null 2>&1 || need_apt+=(systemd-container)
    command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
    command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
    # the cloud's PostgreSQL engine: tests use 127.0.0.1:5432, or a private cluster (initdb)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
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

# Debian's PostgreSQL cluster, started when nothing answers on 5432 (tests that cannot log in
# there as postgres make a private cluster instead: cybernetic/postgres.py)
if [ "${1:-services}" = services ] && [ "$(id -u)" -eq 0 ] && command -v pg_lsclusters >/dev/null 2>&1; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    read -r pg_version pg_cluster _ < <(pg_lsclusters -h | head -n 1) || true
    if [ -n "${pg_version:-}" ]; then
      pg_ctlcluster "$pg_version" "$pg_cluster" start >/dev/null 2>&1 \
        || echo "note: could not start PostgreSQL $pg_version/$pg_cluster; tests use a private cluster" >&2
    fi
  fi
fi
