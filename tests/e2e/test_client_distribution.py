"""Slow tier: the client distribution alone. A fresh virtualenv gets ``pip install ./clients`` (from
a copy of this checkout's files; pip fetches pyzmq, msgpack and numpy from the index) and nothing
else, then runs a real inference and ``tenantctl`` against a real daemon started from this
environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ModelFiles, direct_litert
from tests.support.daemon import REPO, start_daemon_process

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Run by the fresh environment's interpreter: submit, infer, and save the outputs for the check.
APPLICATION = """
import sys
import numpy as np
import tenantclient
from tenantclient import RetryPolicy, TenantClient

endpoint, model, inputs, out = sys.argv[1:]
with TenantClient(endpoint, tenant="app", retry=RetryPolicy(retries=3)) as client:
    info = client.submit_model(model, "classifier")
    outputs = client.infer("classifier", np.load(inputs))
np.savez(out, **outputs)
print(tenantclient.__file__)
"""


def _clean_env() -> dict[str, str]:
    """This environment's variables without what would let the fresh one see this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.mark.timeout(900)
def test_the_client_installs_alone_and_serves_a_real_inference(tmp_path: Path, model_files: ModelFiles) -> None:
    source = tmp_path / "clients"  # a copy: building in place would leave build/ and egg-info in the checkout
    shutil.copytree(REPO / "clients", source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    env_dir = tmp_path / "app-env"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = _clean_env()
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr

    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, env=env, check=True
    )
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert {"tenantclient", "pyzmq", "msgpack", "numpy"} <= installed
    assert not installed & {"tenantd", "pydantic", "ai-edge-litert", "psutil", "lz4", "openvino", "onnxruntime"}
    no_daemon = subprocess.run([python, "-c", "import tenantd"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert no_daemon.returncode != 0 and "No module named 'tenantd'" in no_daemon.stderr

    x = np.random.default_rng(5).standard_normal((1, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    daemon = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/tenantd.sock")
    try:
        app = subprocess.run(
            [
                python,
                "-c",
                APPLICATION,
                daemon.endpoint,
                str(model_files.mlp),
                str(tmp_path / "x.npy"),
                str(tmp_path / "y.npz"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert app.returncode == 0, app.stderr
        assert app.stdout.strip().startswith(str(env_dir))  # the installed copy, not this checkout's
        tenantctl = env_dir / "bin" / "tenantctl"
        ping = subprocess.run(
            [tenantctl, "ping", "--endpoint", daemon.endpoint], capture_output=True, text=True, env=env, timeout=120
        )
        assert ping.returncode == 0 and ping.stdout.startswith("pong from"), ping.stderr
        ran = subprocess.run(
            [tenantctl, "--json", "infer", "classifier", str(tmp_path / "x.npy"), "--tenant", "app"],
            capture_output=True,
            text=True,
            env={**env, "TENANTD_ENDPOINT": daemon.endpoint},
            timeout=120,
        )
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["outputs"] == {"probs": {"dtype": "float32", "shape": [1, 10]}}
    finally:
        daemon.stop()
    expected = direct_litert(model_files.mlp, x)
    with np.load(tmp_path / "y.npz") as got:
        for name, array in expected.items():
            np.testing.assert_allclose(got[name], array, rtol=1e-5, atol=1e-6)
