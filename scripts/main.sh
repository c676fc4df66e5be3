#!/usr/bin/env bash
# The main command: set-up (idempotent), then the whole Dagster graph on the bundled sample data:
# sources -> shards -> catalog -> stage 1 -> stage 2 -> evaluation -> pseudo-labels -> review
# dataset -> corrections. Runs land in var/dagster_home, so `dagster dev` shows them afterwards.
# Extra arguments go to `python -m assets_defs.main` (see --help), e.g. --images 100.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg
exec "$ROOT/.venv/bin/python" -m assets_defs.main "$@"
