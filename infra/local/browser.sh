#!/usr/bin/env bash
# browser.sh — make sure Debian's Chromium and chromedriver are installed
# (the page tests drive a real headless browser). Idempotent and quick
# when both are present; installs them with apt-get otherwise (root or sudo).
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "browser.sh: need root or sudo to install chromium" >&2; exit 1; }
    SUDO=sudo
fi
echo "==> installing Debian's chromium and chromium-driver (page tests)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
command -v chromedriver >/dev/null 2>&1 || { echo "browser.sh: chromedriver still missing" >&2; exit 1; }
