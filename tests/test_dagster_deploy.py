"""Scale configuration in deploy/ loads: instance yamls through Dagster's own instance config schema,
Launchpad run configs against the real job config schemas, executor selection by LUMEN_EXECUTOR.

dagster-postgres / dagster-k8s / dagster-celery are not installed here (their newest release pins an
older dagster than this venv's), so the storage / run-launcher classes themselves are not imported;
the schema Dagster applies to dagster.yaml is."""

import importlib.util
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from assets_defs.definitions import defs
from assets_defs.executors import GPU_OP_TAGS, executor_from_env

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PG_ENV = {"DAGSTER_PG_HOST": "db", "DAGSTER_PG_USER": "u", "DAGSTER_PG_PASSWORD": "p", "DAGSTER_PG_DB": "dagster",
          "LUMEN_IMAGE": "registry.internal/lumen:1"}


@pytest.mark.parametrize("name", ["dagster.yaml", "k8s/dagster.yaml", "local/dagster.yaml"])
def test_instance_yaml_passes_dagsters_schema(name, tmp_path, monkeypatch):
    for k, v in PG_ENV.items():
        monkeypatch.setenv(k, v)
    shutil.copyfile(DEPLOY / name, tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["concurrency"]["pools"]["default_limit"] == 1
    if name != "local/dagster.yaml":
        assert config["storage"]["postgres"]["postgres_db"]["hostname"] == {"env": "DAGSTER_PG_HOST"}
    if name.startswith("k8s"):
        assert (config["run_launcher"]["module"], config["run_launcher"]["class"]) == ("dagster_k8s", "K8sRunLauncher")


def test_instance_yaml_schema_really_rejects_mistakes(tmp_path):
    (tmp_path / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limt: 1\n")
    with pytest.raises(dg.DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


def test_torchrun_retrain_config_fits_the_retrain_job():
    run_config = yaml.safe_load((DEPLOY / "torchrun" / "retrain_8gpu.yaml").read_text())
    job = defs.resolve_job_def("retrain")
    assert job.run_config_schema.config_type is not None
    resolved = dg.validate_run_config(job, run_config)
    assert resolved["ops"]["models"]["config"]["nproc_per_node"] == 8
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, {"ops": {"models": {"config": {"nproc_per_nodes": 8}}}})


def test_shared_mongodb_config_fits_the_review_jobs():
    run_config = yaml.safe_load((DEPLOY / "fiftyone" / "run_config.yaml").read_text())
    resolved = dg.validate_run_config(defs.resolve_job_def("pull_corrections"), run_config)
    assert resolved["resources"]["fiftyone"]["config"]["database_uri"].startswith("mongodb://")


def test_executor_run_configs_have_the_executor_shape():
    k8s = yaml.safe_load((DEPLOY / "k8s" / "run_config.yaml").read_text())["execution"]["config"]
    assert k8s["job_namespace"] and k8s["max_concurrent"] >= 1
    celery = yaml.safe_load((DEPLOY / "celery" / "run_config.yaml").read_text())["execution"]["config"]
    assert celery["broker"].startswith("pyamqp://") and "assets_defs.definitions" in celery["include"]
    for asset in ("models", "evaluation", "pseudo_labels"):  # GPU steps carry the GPU placement tags
        node = next(n for n in defs.resolve_job_def("main").graph.node_defs if n.name == asset)
        assert node.tags["dagster-celery/queue"] == "gpu"
        assert "nvidia.com/gpu" in str(node.tags["dagster-k8s/config"])
    assert set(GPU_OP_TAGS) == {"dagster-k8s/config", "dagster-celery/queue"}


def test_executor_selection(monkeypatch):
    for local in ("", "default", " Multiprocess "):
        assert executor_from_env(local) is None  # Dagster's default executor
    with pytest.raises(ValueError, match="LUMEN_EXECUTOR='spark': expected one of '', k8s, celery"):
        executor_from_env("spark")
    monkeypatch.setenv("LUMEN_EXECUTOR", "spark")  # no name given: the environment decides
    with pytest.raises(ValueError, match="'spark'"):
        executor_from_env()
    for name, module, attr in (("k8s", "dagster_k8s", "k8s_job_executor"), ("celery", "dagster_celery", "celery_executor")):
        if importlib.util.find_spec(module):  # the `.[scale]` venv: the named executor itself, not just something
            executor = executor_from_env(name.upper())
            assert executor is getattr(importlib.import_module(module), attr)
            assert isinstance(executor, dg.ExecutorDefinition)
        else:  # the shared venv: one line that says which package to install
            with pytest.raises(ImportError) as err:
                executor_from_env(name)
            assert str(err.value) == (f"LUMEN_EXECUTOR={name} needs the {module.replace('_', '-')} package: "
                                      f".venv/bin/pip install {module.replace('_', '-')}")
