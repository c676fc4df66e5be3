"""Scale configuration in deploy/ loads: instance yamls through Dagster's own instance config schema,
Launchpad run configs against the real job config schemas (with the real k8s / celery executors),
the Kubernetes run launcher and step config built by dagster_k8s itself (no cluster needed: a
kubeconfig that is never contacted), executor selection by LUMEN_EXECUTOR.
tests/test_deploy_celery.py runs the PostgreSQL + Celery deployment for real."""

import importlib
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
PG_ENV = {"DAGSTER_PG_HOST": "db", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USER": "u", "DAGSTER_PG_PASSWORD": "p", "DAGSTER_PG_DB": "dagster",
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
    assert celery["broker"].startswith("redis://") and "assets_defs.definitions" in celery["include"]
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


needs_k8s = pytest.mark.skipif(not importlib.util.find_spec("dagster_k8s"),
                               reason="dagster-k8s is not installed (the `scale` extra)")
needs_celery = pytest.mark.skipif(not importlib.util.find_spec("dagster_celery"),
                                  reason="dagster-celery is not installed (the `scale` extra)")

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


@needs_k8s
def test_k8s_run_launcher_is_built_by_dagster_k8s_from_the_deploy_yaml(tmp_path, monkeypatch):
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    for k, v in PG_ENV.items():
        monkeypatch.setenv(k, v)
    shutil.copyfile(DEPLOY / "k8s" / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    launcher = config["run_launcher"]
    cls = getattr(importlib.import_module(launcher["module"]), launcher["class"])
    assert cls is K8sRunLauncher
    checked = process_config(cls.config_type(), launcher["config"])
    assert checked.success, checked.errors
    # outside a cluster: the same config with a kubeconfig instead of the in-cluster service account
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    built = cls.from_config_value(None, {**checked.value, "load_incluster_config": False,
                                         "kubeconfig_file": str(tmp_path / "kubeconfig")})
    assert built.job_namespace == "lumen" and built.instance_config_map == "dagster-instance"
    assert "LUMEN_DATA_ROOT=/data/lumen" in built.env_vars
    assert [m["mountPath"] for m in built.volume_mounts] == ["/data/lumen"]
    # a typo in the launcher config is caught by the class' own schema
    broken = process_config(cls.config_type(), {**launcher["config"], "job_namespaces": "lumen"})
    assert not broken.success


@needs_k8s
def test_k8s_executor_config_and_gpu_tags_fit_dagster_k8s(monkeypatch):
    from dagster_k8s import k8s_job_executor
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    from assets_defs.definitions import build_defs

    monkeypatch.setenv("LUMEN_EXECUTOR", "k8s")
    job = build_defs().resolve_job_def("main")
    assert job.executor_def is k8s_job_executor
    run_config = yaml.safe_load((DEPLOY / "k8s" / "run_config.yaml").read_text())
    resolved = dg.validate_run_config(job, run_config)
    assert resolved["execution"]["k8s"]["max_concurrent"] == 4  # resolved under the executor's name
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, {"execution": {"config": {"max_concurent": 4}}})
    # the GPU steps' op tag is a valid per-step k8s config that asks for one GPU
    k8s = UserDefinedDagsterK8sConfig.from_dict(GPU_OP_TAGS["dagster-k8s/config"])
    assert k8s.container_config["resources"]["limits"]["nvidia.com/gpu"] == "1"


@needs_celery
def test_celery_run_config_fits_the_celery_executor(monkeypatch):
    from dagster_celery import celery_executor

    from assets_defs.definitions import build_defs

    monkeypatch.setenv("LUMEN_EXECUTOR", "celery")
    job = build_defs().resolve_job_def("main")
    assert job.executor_def is celery_executor
    run_config = yaml.safe_load((DEPLOY / "celery" / "run_config.yaml").read_text())
    resolved = dg.validate_run_config(job, run_config)["execution"]
    assert resolved["celery"]["include"] == ["assets_defs.definitions"], resolved
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, {"execution": {"config": {"brokr": "redis://x"}}})


def test_a_step_waiting_for_a_gpu_slot_asks_again_within_two_seconds():
    """Loading the definitions caps Dagster's slot re-check back-off (else up to 15 s of an idle GPU worker
    between two queued partitions): the interval Dagster's own claim code computes, at every retry count."""
    from dagster._core.execution.plan.instance_concurrency_context import _calculate_timeout_interval

    from assets_defs.slot_polling import SLOT_RECHECK_MAX_S

    assert defs is not None  # imported above: the module that applies the cap
    waits = [_calculate_timeout_interval(None, n) for n in range(60)]
    assert max(waits) == SLOT_RECHECK_MAX_S and waits[0] == 1  # first re-check still after 1 s
