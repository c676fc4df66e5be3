"""Which model version is in use, and why: the regression gate's decisions, kept as one JSON file.

A trained version is only a candidate. It becomes the model that pseudo-labels (and the baseline
of the next comparison) when its evaluation passed the no-regression gate, or when someone
promotes it on purpose. A version that failed is kept on disk for inspection, marked rejected.

    registry = ModelRegistry(models_dir / "registry.json")
    registry.decide(entry, passed=False, reason="bbox/AP50 dropped 0.12", by="evaluation")  # stays out of use
    registry.promote("v0003", reason="accepted the drop: new classes", by="ana")            # in use on purpose
    registry.reevaluated("v0002", metrics, protocol=2)                                        # measured again
    registry.in_use()                                                                         # the entry pseudo-labels use
    registry.history("v0002")                                                                 # every status it had

Each version's entry holds its current status and reason and, apart from them, its evaluation's
`verdict`, which nothing overwrites. Every status change (who, when, why) is also appended to the
file's `history`, which is only ever appended to, so a promotion never hides what the gate said.

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
    def _read(self) -> dict:
        if not self.path.exists():
            return {"models": {}, "history": []}
        data = json.loads(self.path.read_text())
        return {"models": data.get("models", {}), "history": data.get("history", [])}

    def entries(self) -> dict[str, dict]:
        """version -> entry (checkpoint_dir, init_dir, metrics, partitions, status, reason, verdict, decided_at)."""
        return self._read()["models"]

    def history(self, version: str | None = None) -> list[dict]:
        """Every status change, oldest first: {version, status, reason, by, at} (of one version, if given).
        A registry written before the history was kept starts with each entry's last decision."""
        data = self._read()
        events = data["history"] or [{"version": v, "status": e["status"], "reason": e["reason"], "by": "",
                                      "at": e["decided_at"]} for v, e in data["models"].items()]
        return [h for h in events if version is None or h["version"] == version]

    def in_use(self) -> dict | None:
        """The entry of the model in use, or None before any version passed its gate."""
        in_use = [e for e in self.entries().values() if e["status"] == IN_USE]
        return in_use[0] if in_use else None

    def get(self, version: str) -> dict:
        return self._entry(self._read(), version)

    # deciding -------------------------------------------------------------------------------
    def decide(self, entry: dict, passed: bool, reason: str, by: str = "") -> dict:
        """Record an evaluated version: in use when it passed its gate, else rejected (kept).
        `reason` is also kept as the version's `verdict`, which later status changes leave alone."""
        with self._locked() as data:
            models = data["models"]
            if passed:
                self._retire_current(data, f"replaced by {entry['version']}", by)
            models[entry["version"]] = {**entry, "verdict": reason, "decided_at": _now()}
            self._set_status(data, entry["version"], IN_USE if passed else REJECTED, reason, by)
            return models[entry["version"]]

    def promote(self, version: str, reason: str, by: str = "") -> dict:
        """Put an evaluated version into use on purpose (e.g. a rejected one whose drop is accepted).
        The returned entry has `warning` set when the version's evaluation had rejected it."""
        with self._locked() as data:
            models = data["models"]
            if version not in models:
                raise InputError(f"model version {version!r} was never evaluated, so it cannot be promoted; "
                                 f"evaluated versions: {sorted(models) or 'none'}")
            was = models[version]["status"]
            self._retire_current(data, f"replaced by {version} (promoted)", by)
            self._set_status(data, version, IN_USE, f"promoted: {reason}", by)
            warning = rejected_warning(version, models[version]) if was == REJECTED else ""
            return {**models[version], "warning": warning}

    def reevaluated(self, version: str, metrics: dict, protocol: int, metrics_file: str = "") -> dict:
        """A version's metrics measured again under another evaluation protocol (its status and verdict stay):
        the new numbers replace those of the tasks measured again; what they replace is kept in `earlier_metrics`."""
        with self._locked() as data:
            entry = self._entry(data, version)
            earlier = {"protocol": entry.get("protocol", 1), "metrics": entry.get("metrics", {}),
                       "metrics_file": entry.get("metrics_file", ""), "until": _now()}
            entry.update(metrics={**entry.get("metrics", {}), **metrics}, protocol=protocol,
                         earlier_metrics=[*entry.get("earlier_metrics", []), earlier])
            if metrics_file:
                entry["metrics_file"] = metrics_file
            return entry

    def _entry(self, data: dict, version: str) -> dict:
        """`version`'s entry in the registry's data (one clear line when it is not there)."""
        if version not in data["models"]:
            raise InputError(f"model version {version!r} is not in {self.path}; evaluated versions: "
                             f"{sorted(data['models']) or 'none'}")
        return data["models"][version]

    @staticmethod
    def _set_status(data: dict, version: str, status: str, reason: str, by: str) -> None:
        at = _now()
        data["models"][version].update(status=status, reason=reason, decided_at=at)
        data["history"].append({"version": version, "status": status, "reason": reason, "by": by, "at": at})

    def _retire_current(self, data: dict, why: str, by: str) -> None:
        for v, e in data["models"].items():
            if e["status"] == IN_USE:
                self._set_status(data, v, RETIRED, why, by)

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
            data = self._read()
            if not data["history"]:  # a registry from before the history: keep its last decisions as the start
                data["history"] = self.history()
            yield data
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
            os.replace(tmp, self.path)


def rejected_warning(version: str, entry: dict) -> str:
    """What a person promoting a rejected version should read (the gate's own words)."""
    return (f"{version} was rejected by its evaluation ({entry.get('verdict') or entry.get('reason')}); "
            "it is in use now because it was promoted on purpose")
