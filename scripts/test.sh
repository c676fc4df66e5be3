#!/usr/bin/env bash
# The test command: set-up (idempotent) with the `scale` extra, the browser the UI tests drive, the
# services the deployment test starts (PostgreSQL, Redis), then the whole suite.
# Extra arguments go to pytest. The quick tier, under 3 minutes on 2 cores:
#   bash scripts/test.sh --quick        (= -m "not slow" -n 2: two pytest-xdist workers, one torch thread each)
# leaves out the tests marked `slow` (pyproject.toml): those that train for more than a few seconds, or start
# servers (Dagster, the FiftyOne App, Celery), a browser, torchrun or the main command. CI runs everything, serially.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LUMEN_EXTRAS=dev,scale bash scripts/setup.sh
bash scripts/install_browser.sh || echo "[test] no chromium: the browser tests will be skipped" >&2
bash scripts/install_services.sh || echo "[test] no postgresql/redis-server: the deployment test will be skipped" >&2

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export MPLBACKEND=Agg
args=()
for a in "$@"; do
  if [ "$a" = "--quick" ]; then args+=(-m "not slow" -n 2); else args+=("$a"); fi
done
set +e
"$ROOT/.venv/bin/python" -m pytest -ra --durations=15 "${args[@]}"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests" >&2
fi
exit "$rc"
