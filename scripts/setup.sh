#!/usr/bin/env bash
# Idempotent set-up of the project-local virtual environment `.venv`.
# Creates it when absent, re-installs only when pyproject.toml changed, and makes
# FiftyOne's embedded MongoDB start offline (see ../shared/OFFLINE_SETUP.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${LUMEN_PYTHON:-$(command -v python3.11 || command -v python3)}"
# Optional extras: the test command adds `scale` (dagster-postgres/-celery/-k8s); the main command stays lean.
EXTRAS="${LUMEN_EXTRAS:-dev}"

log() { echo "[setup] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.lumen-installed"  # "<hash of pyproject.toml + this script> <extras installed>"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
covered() {  # the stamp's hash matches and its extras include every requested one
  [ -f "$STAMP" ] || return 1
  read -r have_hash have_extras < "$STAMP" || true
  [ "$have_hash" = "$WANT" ] || return 1
  local e
  for e in ${EXTRAS//,/ }; do [[ ",${have_extras}," == *",$e,"* ]] || return 1; done
}
if ! covered; then
  log "installing the project and its dependencies [$EXTRAS] (a few minutes on a fresh machine)"
  # pip's warnings about this machine's local index folders are noise; real errors still show.
  quiet() { "$@" 2>&1 | { grep -v -e "is ignored: it is neither" || true; } >&2; return "${PIPESTATUS[0]}"; }
  quiet "$VENV/bin/python" -m pip install -q --progress-bar off --upgrade pip
  quiet "$VENV/bin/python" -m pip install -q --progress-bar off -e "$ROOT[$EXTRAS]"
  "$VENV/bin/python" "$ROOT/scripts/fix_fiftyone_db.py"
  echo "$WANT $EXTRAS" > "$STAMP"
else
  log "$VENV is up to date"
fi
