import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets_defs.definitions import defs
from assets_defs.resources import LumenPaths

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_validate():
    proc = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_ingest_partition_with_blocking_checks(tmp_path, dagster_instance):
    job = defs.resolve_job_def("ingest")
    paths = LumenPaths(root=str(tmp_path / "data"), demo_images=24)
    result = job.execute_in_process(partition_key="refcoco", instance=dagster_instance, resources={"paths": paths})
    assert result.success
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks == {"records_accounted": True, "heatmap_peaks_at_centers": True, "no_eval_images_in_training": True}
    mat = {e.asset_key.to_user_string(): e.step_materialization_data.materialization
           for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"}
    shards_meta = mat["shards"].metadata
    assert shards_meta["samples_written"].value > 0
    assert "data:image/png;base64," in shards_meta["preview"].value
    assert mat["catalog"].metadata["samples"].value == shards_meta["samples_written"].value
    # the run is recorded in the instance the UI reads
    assert dagster_instance.get_runs_count() == 1


def test_accounting_check_fails_on_an_unaccounted_record(tmp_path, dagster_instance):
    """The check the ingest job blocks on really fails when a record is missing."""
    import json

    from pipelines.checks import check_accounting

    paths = LumenPaths(root=str(tmp_path / "data"), demo_images=24)
    job = defs.resolve_job_def("ingest")
    assert job.execute_in_process(partition_key="vqav2", instance=dagster_instance, resources={"paths": paths}).success
    manifest = paths.shards / "vqav2" / "train" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["counts"]["records_read"] += 1
    manifest.write_text(json.dumps(data))
    passed, meta = check_accounting(manifest.parent)
    assert not passed and meta["unaccounted"] == 1
