#!/usr/bin/env bash
# Install the Debian packages named in $PACKAGES (and python3-venv when venv is missing), if any are missing.
set -euo pipefail
missing=()
for p in ${PACKAGES:-}; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
"${PYTHON:-python3}" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing system packages: ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
  echo "error: root is needed to install ${missing[*]}; install them, or run make as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
