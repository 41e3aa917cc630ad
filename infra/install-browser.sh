#!/usr/bin/env bash
# Debian's Chromium for the service's browser tests (Playwright drives /usr/bin/chromium; it never downloads a
# browser). Does nothing when chromium is already installed.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null
chromium --version
