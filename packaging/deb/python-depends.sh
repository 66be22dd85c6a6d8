#!/bin/sh
# Print the package's dependency on Debian's python3 for the interpreter the venv is built with:
#   python-depends.sh /usr/bin/python3    ->    python3 (>= 3.11), python3 (<< 3.12)
# The venv in /opt/cybernetic-edge links to /usr/bin/python3 and keeps its libraries in
# lib/python3.X/site-packages, with compiled extensions for that minor version: it runs on
# that minor version only. Debian 12 ships 3.11, Debian 13 3.13, so a build made on each
# release installs there (build.sh, docs/install.md). Refuses interpreters older than 3.11,
# the oldest the project supports (pyproject.toml requires-python).
set -eu

python=${1:?usage: python-depends.sh PYTHON}
version=$("$python" -c 'import sys; print(*sys.version_info[:2])') \
    || { echo "python-depends.sh: cannot run $python" >&2; exit 1; }
major=${version% *}
minor=${version#* }
case "$major.$minor" in
    *[!0-9.]*|.*|*.) echo "python-depends.sh: $python printed '$version'" >&2; exit 1 ;;
esac
if [ "$major" -ne 3 ] || [ "$minor" -lt 11 ]; then
    echo "python-depends.sh: $python is Python $major.$minor; the package needs 3.11 or newer" >&2
    exit 1
fi
echo "python3 (>= 3.$minor), python3 (<< 3.$((minor + 1)))"
