"""The package's shape: no import cycles, pure logic free of Ray and Docker, and a wheel that works alone.

The first two read the source (module-level imports only: imports inside functions are how a command
loads its job lazily). The wheel test builds `dist/taskray-*.whl`, installs it into a clean venv (the
heavy dependencies come from this interpreter's site-packages; taskray itself only from the wheel),
builds the sandbox image from the wheel's own copy of `sandbox/`, and runs the eval self-check with it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "taskray"

# Pure logic: parsing, detection, catalog rows, reward and pass@k arithmetic, mixing. They must not
# need a cluster or a daemon to import or to test.
PURE = [
    "taskray.scan.blob",
    "taskray.scan.detect",
    "taskray.scan.catalog",
    "taskray.scan.synth",
    "taskray.evaluate.humaneval",
    "taskray.mix.spec",
    "taskray.mix.split",
    "taskray.tasks.mixture",
    "taskray.tasks.common",
    "taskray.verify.task",
    "taskray.verify.rewards",
    "taskray.errors",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """Modules imported when `path` is imported: statements outside functions and classes."""
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for child in ast.walk(node):
                child._inside = True  # type: ignore[attr-defined]
    for node in ast.walk(tree):
        if getattr(node, "_inside", False):
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = {d for d in top_level_imports(path) if d in modules and d != name}
        # importing a.b.c runs a/__init__ and a/b/__init__ too (the importer's own packages are already
        # being imported, so they are not a new edge)
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        deps |= {".".join(d.split(".")[:i]) for d in deps for i in range(2, d.count(".") + 1)} & set(modules)
        graph[name] = deps - {name} - ancestors
    return graph


def test_no_import_cycles():
    graph = import_graph()
    assert "taskray.scan.job" in graph and "taskray.mix.job" in graph and "taskray.evaluate.job" in graph
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_pure_modules_need_no_ray_or_docker():
    graph = import_graph()
    for name in PURE:
        seen, todo = set(), [name]
        while todo:  # everything `name` imports, transitively, within taskray
            mod = todo.pop()
            if mod not in seen:
                seen.add(mod)
                todo += graph[mod]
        paths = [PACKAGE.parent / (m.replace(".", "/") + ".py") for m in seen]
        paths = [p if p.exists() else p.with_suffix("") / "__init__.py" for p in paths]
        heavy = {i for p in paths for i in top_level_imports(p) if i.split(".")[0] in ("ray", "docker")}
        assert heavy == set(), f"{name} imports {heavy} at module level"


def test_every_job_has_a_package_and_an_entrypoint():
    for job, command in (("scan", "scan"), ("evaluate", "eval"), ("mix", "mix"), ("verify", "verify")):
        assert (PACKAGE / job / "job.py").is_file() and (PACKAGE / job / "cli.py").is_file()
        entry = (ROOT / "jobs" / f"{job}.py").read_text()
        assert f'run("{command}")' in entry


@pytest.mark.timeout(900)
def test_wheel_builds_the_sandbox_and_passes_the_self_check(tmp_path, shared_data):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("taskray-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    py, taskray = env_dir / "bin" / "python", env_dir / "bin" / "taskray"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # a working dir outside the checkout, and an image name of its own: the build must use the wheel
    image = f"taskray-sandbox:wheel-{os.getpid()}"
    env = {**os.environ, "TASKRAY_SANDBOX_IMAGE": image, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import taskray.sandbox.image as m, importlib.resources as r; "
            "print(m.__file__); print(r.files('taskray.sandbox.context'))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert where.returncode == 0 and str(ROOT) not in where.stdout and str(env_dir) in where.stdout, where
    try:
        built = subprocess.run(
            [str(taskray), "sandbox", "build"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )
        assert built.returncode == 0 and f"built {image}" in built.stderr, built.stderr[-3000:]
        he = shared_data / "humaneval" / "HumanEval.jsonl.gz"
        check = subprocess.run(
            [
                str(taskray),
                "eval",
                "--problems",
                f"humaneval:{he}",
                "--self-check",
                "--no-progress",
                "--num-cpus",
                "2",
                "--out",
                str(tmp_path / "eval"),
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )
        assert check.returncode == 0, check.stderr[-3000:]
        assert '"passed": 164' in check.stdout
    finally:
        subprocess.run(["docker", "image", "rm", "-f", image], capture_output=True)
