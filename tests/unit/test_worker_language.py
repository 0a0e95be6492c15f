"""The device worker's language level: it may run under a device's own Python (JetPack 4.6 ships
3.6), so every file it imports must be valid Python 3.6. Checked with vermin over exactly the files
a worker process imports: first its own (tenantd.workermain and what it imports), then, with a
runtime adapter imported as a worker imports one on ``load``, that adapter's first-party files.
Those are found by walking the imports statically (every adapter, installed here or not: TensorRT
and pycuda are not), and the walk is checked against a real import where the runtime is installed.
The same walk keeps the set small: nothing a worker imports may import a daemon-only module.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.support.daemon import REPO, daemon_env

VERMIN = Path(sys.executable).with_name("vermin")
ADAPTERS = (
    "tenantd.runtimes.litert",
    "tenantd.runtimes.ort",
    "tenantd.runtimes.openvino",
    "tenantd.runtimes.edgetpu",
    "tenantd.runtimes.tensorrt",
)
WORKER = "tenantd.workermain"
# Stand-in vendor modules (tests/stubs/README.md) for the runtimes that cannot be installed here.
STUBS = {
    "tenantd.runtimes.tensorrt": (REPO / "tests/stubs/trt10", REPO / "tests/stubs/cuda", REPO / "tests/stubs"),
}
FIRST_PARTY = {"tenantd": REPO / "tenantd", "tenantwire": REPO / "clients" / "tenantwire"}
# Every first-party file a worker may import, with any adapter: the set this test keeps small.
WORKER_FILES = {
    "tenantd/__init__.py",
    "tenantd/workermain.py",
    "tenantd/workerwire.py",
    "tenantd/errors.py",
    "tenantd/modelfile.py",
    "tenantd/onnxrefs.py",
    "tenantd/runtimes/__init__.py",
    "tenantd/runtimes/base.py",
    "tenantd/runtimes/litert.py",
    "tenantd/runtimes/ort.py",
    "tenantd/runtimes/openvino.py",
    "tenantd/runtimes/edgetpu.py",
    "tenantd/runtimes/tflitefile.py",
    "tenantd/runtimes/tensorrt.py",
    "clients/tenantwire/__init__.py",
    "clients/tenantwire/errors.py",
    "clients/tenantwire/irbundle.py",
    "clients/tenantwire/tensors.py",
}
# What else a worker-side file may import: the standard library, numpy and the vendor runtimes
# (imported only where that runtime is used). lz4 is tenantwire's optional codec (a packed tensor,
# which a worker never decodes); google.protobuf comes with onnx, where that is installed.
WORKER_THIRD_PARTY = {
    "numpy",
    "ai_edge_litert",
    "tflite_runtime",
    "pycoral",
    "onnxruntime",
    "onnx",
    "google",
    "openvino",
    "tensorrt",
    "pycuda",
    "pynvml",
    "cuda",
    "lz4",
}
# Named so that the refusal says why: what the daemon has and a device's Python need not.
DAEMON_ONLY = {
    "pydantic",
    "psutil",
    "msgpack",
    "zmq",
    "aiohttp",
    "grpc",
    "prometheus_client",
    "tomllib",
    "tenantd.config",
    "tenantd.memory",
    "tenantwire.protocol",
}


def imported_files(*modules: str, stubs: Iterable[Path] = ()) -> list[str]:
    """The first-party files a fresh interpreter has imported after importing ``modules``, the
    worker's own entry point first (as ``python -m tenantd.workermain`` does); ``stubs``: folders
    of stand-in vendor modules put first on its path."""
    code = (
        "import importlib, json, sys\n"
        "import tenantd.workermain\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        "files = sorted({getattr(m, '__file__', None) or '' for m in list(sys.modules.values())})\n"
        f"print(json.dumps([f for f in files if f.startswith({str(REPO)!r})]))\n"
    )
    env = daemon_env()
    env["PYTHONPATH"] = os.pathsep.join([*map(str, stubs), env["PYTHONPATH"]])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    # The repository's own files: not its tests, nor a virtualenv inside it (.venv, as make creates).
    return [f for f in json.loads(out.stdout) if "/tests/" not in f and "site-packages" not in f]


def vermin(files: list[str]) -> subprocess.CompletedProcess[str]:
    if not VERMIN.exists():
        pytest.skip("vermin is not installed (pip install 'tenantd[test]')")
    return subprocess.run(
        [str(VERMIN), "--target=3.6-", "--no-tips", "--violations", "--eval-annotations", *files],
        capture_output=True,
        text=True,
    )


def test_the_worker_itself_is_python_3_6() -> None:
    files = imported_files()
    names = {Path(f).relative_to(REPO).as_posix() for f in files}
    # What a worker imports before any runtime: nothing of the daemon beyond these three.
    assert names == {"tenantd/__init__.py", "tenantd/workermain.py", "tenantd/workerwire.py"}
    result = vermin(files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_vermin_catches_a_3_7_construct(tmp_path: Path) -> None:
    """The check can fail: the same command on a file using a 3.7 feature is refused."""
    late = tmp_path / "late.py"
    late.write_text("from __future__ import annotations\nimport dataclasses\n")
    assert vermin([str(late)]).returncode != 0


def _module_file(name: str) -> Path | None:
    """The file of first-party module ``name`` (a package's ``__init__.py``), else None."""
    top, _, rest = name.partition(".")
    root = FIRST_PARTY.get(top)
    if root is None:
        return None
    base = root.joinpath(*rest.split(".")) if rest else root
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def _imports(path: Path) -> list[str]:
    """Every module ``path`` names in an import, anywhere in it (in a function, a try, a branch),
    with ``from a import b`` giving ``a`` and ``a.b`` (``b`` may be a submodule)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the daemon imports absolutely)"
            assert node.module is not None
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def worker_closure(*modules: str) -> list[Path]:
    """The first-party files importing ``modules`` can load, found without importing anything: each
    module's packages and file, then what those files import, transitively."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for prefix in (".".join(parts[: i + 1]) for i in range(len(parts))):
            path = _module_file(prefix)
            if path is None or prefix in seen:
                continue
            seen[prefix] = path
            todo += _imports(path)
    return sorted(set(seen.values()))


def _relative(files: Iterable[str | Path]) -> set[str]:
    return {Path(f).relative_to(REPO).as_posix() for f in files}


def daemon_only_imports(files: Iterable[Path]) -> list[str]:
    """``file: module`` for each import in ``files`` that a device worker's Python need not have."""
    found = []
    for path in files:
        for name in _imports(path):
            top = name.partition(".")[0]
            daemon_only = any(name == d or name.startswith(d + ".") for d in DAEMON_ONLY)
            foreign = top not in FIRST_PARTY and top not in sys.stdlib_module_names and top not in WORKER_THIRD_PARTY
            if daemon_only or foreign:
                found.append(f"{Path(path).relative_to(REPO) if Path(path).is_relative_to(REPO) else path}: {name}")
    return found


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_runtime_adapters_a_worker_imports_are_python_3_6(adapter: str) -> None:
    files = worker_closure(WORKER, adapter)
    assert f"{adapter.replace('.', '/')}.py" in _relative(files)
    result = vermin([str(f) for f in files])
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_static_walk_finds_what_a_real_import_loads(adapter: str) -> None:
    """The walk above is what the language check trusts: it finds every first-party file a real
    import loads (TensorRT and pycuda, not installed here, by their stand-ins in tests/stubs)."""
    stubs = STUBS.get(adapter, ())
    if not stubs:
        pytest.importorskip(adapter)
    imported = _relative(imported_files(adapter, stubs=stubs))
    assert f"{adapter.replace('.', '/')}.py" in imported
    assert imported <= _relative(worker_closure(WORKER, adapter)), imported - _relative(worker_closure(WORKER, adapter))


def test_a_worker_imports_no_daemon_only_module() -> None:
    files = worker_closure(WORKER, *ADAPTERS)
    assert _relative(files) == WORKER_FILES
    assert daemon_only_imports(files) == []


def test_a_daemon_only_import_is_found(tmp_path: Path) -> None:
    """The check can fail: a worker-side file importing msgpack, the daemon's config or an
    unknown package (even inside a function) is named."""
    late = tmp_path / "adapter.py"
    late.write_text("import json\nimport msgpack\n\ndef f():\n    from tenantd import config\n    import yaml\n")
    assert daemon_only_imports([late]) == [
        f"{late}: msgpack",
        f"{late}: tenantd.config",
        f"{late}: yaml",
    ]
