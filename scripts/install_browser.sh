#!/usr/bin/env bash
# Debian's chromium, which the UI tests drive through Playwright (Playwright's own browser
# download does not work offline). Needs root and apt; a no-op when chromium is present.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "[browser] chromium missing and cannot apt-get install it (not root or no apt)" >&2
  exit 1
fi
echo "[browser] installing Debian's chromium (about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium >/dev/null
