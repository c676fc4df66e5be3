"""Dependencies run one way: lumen_cli and assets_defs -> lumen_model -> pipelines.

`pipelines` (the data library) imports neither the model, the CLI nor Dagster; `lumen_model`
imports neither Dagster, FiftyOne nor the CLI. Checked twice: every import statement in the
sources (lazy ones inside functions included), and what importing every module really loads.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The App's Lumen plugin (fiftyone_plugins/lumen: Ask Lumen) is the one place besides the CLI and the assets that
# holds both the model and FiftyOne; it lives outside both packages (FiftyOne loads it by path), so neither
# allow-list changes: nothing here may import it back.
FORBIDDEN = {
    "pipelines": {"lumen_model", "lumen_cli", "assets_defs", "dagster", "fiftyone_plugins"},
    "lumen_model": {"lumen_cli", "assets_defs", "dagster", "fiftyone", "fiftyone_plugins"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_statement_runs_against_the_direction(package):
    wrong = {f"{p.relative_to(ROOT)}: {', '.join(sorted(bad))}"
             for p in (ROOT / package).rglob("*.py") if (bad := _imported_packages(p) & FORBIDDEN[package])}
    assert not wrong, wrong


def test_the_checker_sees_a_lazy_import(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from lumen_model.train import train\n    import dagster as dg\n")
    assert _imported_packages(src) >= {"lumen_model", "dagster"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_every_module_loads_nothing_against_the_direction(package):
    code = f"""
import importlib, json, pkgutil, sys
import {package}
for m in pkgutil.walk_packages({package}.__path__, "{package}."):
    importlib.import_module(m.name)
print(json.dumps(sorted({{n.split(".")[0] for n in sys.modules}})))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert package in loaded and not loaded & FORBIDDEN[package], loaded & FORBIDDEN[package]


def test_cli_help_does_not_load_torch():
    """`lumen --help` and `lumen train --help` stay fast: the flags are built without torch."""
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr))\n"
             "import lumen_cli\n"
             "lumen_cli.build_parser().parse_args(sys.argv[1:])\n")
    for argv in (["--help"], ["train", "--help"]):
        proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 0 and "usage: lumen" in proc.stdout, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == "False", (argv, proc.stderr)
    assert "--weight-decay" in proc.stdout  # the train flags came from lumen_model.train_config


def _module_imports(packages) -> dict[str, set[str]]:
    """{module: the modules of `packages` it imports (lazy imports included)}."""
    paths = {}
    for package in packages:
        for p in (ROOT / package).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            paths[name.removesuffix(".__init__")] = p
    graph = {}
    for name, p in paths.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = (deps & paths.keys()) - {name}
    return graph


def test_no_modules_import_each_other():
    """No import cycle among the project's modules (pipelines.convert and convert_parallel once imported each
    other, one of them lazily inside a function): a module depends on others, never on itself through them."""
    graph = _module_imports(["pipelines", "lumen_model", "assets_defs", "lumen_cli"])
    cycles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                cycles.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
    assert not cycles, f"modules on an import cycle: {', '.join(sorted(cycles))}"
