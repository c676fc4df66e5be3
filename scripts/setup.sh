#!/usr/bin/env bash
# Idempotent set-up of the project-local virtual environment `.venv`.
# Creates it when absent, re-installs only when pyproject.toml changed, and makes
# FiftyOne's embedded MongoDB start offline (see ../shared/OFFLINE_SETUP.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${LUMEN_PYTHON:-$(command -v python3.11 || command -v python3)}"

log() { echo "[setup] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.lumen-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  log "installing the project and its dependencies (a few minutes on a fresh machine)"
  # pip's warnings about this machine's local index folders are noise; real errors still show.
  quiet() { "$@" 2>&1 | { grep -v -e "is ignored: it is neither" || true; } >&2; return "${PIPESTATUS[0]}"; }
  quiet "$VENV/bin/python" -m pip install -q --progress-bar off --upgrade pip
  quiet "$VENV/bin/python" -m pip install -q --progress-bar off -e "$ROOT[dev]"
  "$VENV/bin/python" "$ROOT/scripts/fix_fiftyone_db.py"
  echo "$WANT" > "$STAMP"
else
  log "$VENV is up to date"
fi
