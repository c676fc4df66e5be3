"""Which model version is in use, and why: the regression gate's decisions, kept as one JSON file.

A trained version is only a candidate. It becomes the model that pseudo-labels (and the baseline
of the next comparison) when its evaluation passed the no-regression gate, or when someone
promotes it on purpose. A version that failed is kept on disk for inspection, marked rejected.

    registry = ModelRegistry(models_dir / "registry.json")
    registry.decide(entry, passed=False, reason="bbox/AP50 dropped 0.12")   # stays out of use
    registry.promote("v0003", reason="accepted the drop: new classes")      # in use on purpose
    registry.in_use()                                                         # the entry pseudo-labels use

Writes are atomic (temp file + rename) under an exclusive lock, so a retrain and a promotion at the
same moment never lose each other's decision.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from pipelines.errors import InputError

IN_USE, REJECTED, RETIRED = "in use", "rejected", "retired"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ModelRegistry:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # reading --------------------------------------------------------------------------------
    def entries(self) -> dict[str, dict]:
        """version -> entry (checkpoint_dir, init_dir, metrics, partitions, status, reason, decided_at)."""
        if not self.path.exists():
            return {}
        return json.loads(self.path.read_text())["models"]

    def in_use(self) -> dict | None:
        """The entry of the model in use, or None before any version passed its gate."""
        in_use = [e for e in self.entries().values() if e["status"] == IN_USE]
        return in_use[0] if in_use else None

    def get(self, version: str) -> dict:
        entries = self.entries()
        if version not in entries:
            raise InputError(f"model version {version!r} is not in {self.path}; evaluated versions: "
                             f"{sorted(entries) or 'none'}")
        return entries[version]

    # deciding -------------------------------------------------------------------------------
    def decide(self, entry: dict, passed: bool, reason: str) -> dict:
        """Record an evaluated version: in use when it passed its gate, else rejected (kept)."""
        with self._locked() as models:
            if passed:
                self._retire_current(models, f"replaced by {entry['version']}")
            models[entry["version"]] = {**entry, "status": IN_USE if passed else REJECTED, "reason": reason,
                                        "decided_at": _now()}
            return models[entry["version"]]

    def promote(self, version: str, reason: str) -> dict:
        """Put an evaluated version into use on purpose (e.g. a rejected one whose drop is accepted)."""
        with self._locked() as models:
            if version not in models:
                raise InputError(f"model version {version!r} was never evaluated, so it cannot be promoted; "
                                 f"evaluated versions: {sorted(models) or 'none'}")
            self._retire_current(models, f"replaced by {version} (promoted)")
            models[version].update(status=IN_USE, reason=f"promoted: {reason}", decided_at=_now())
            return models[version]

    @staticmethod
    def _retire_current(models: dict, why: str) -> None:
        for e in models.values():
            if e["status"] == IN_USE:
                e.update(status=RETIRED, reason=f"{e['reason']}; {why}")

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
            models = self.entries()
            yield models
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"models": models}, indent=2, sort_keys=True))
            os.replace(tmp, self.path)
