"""End to end: bearer tokens on both KServe front doors under ``--auth keys`` (issued, refused,
revoked by ``tenantd keys remove`` and SIGHUP), the same isolation as on ZeroMQ, and TLS with a
self-signed certificate made by the ``openssl`` command for the test."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tenantclient import TenantClient
from tests.conftest import ModelFiles
from tests.support.daemon import REPO, daemon_env
from tests.support.kserve import bearer, kserve_daemon, tenant

pytestmark = pytest.mark.e2e

SERVE = [sys.executable, "-m", "tenantd", "serve"]
SELF_SIGNED = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
SELF_SIGNED += ["-addext", "subjectAltName=IP:127.0.0.1"]
MLP_INFER = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.25] * 32}]}


def keys(state: Path, *args: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "tenantd", "keys", *args, "--state-dir", str(state), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=daemon_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout)
    return result


def issue(state: Path, name: str, *flags: str) -> str:
    token_file = Path(keys(state, "add", name, *flags)["token_file"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    stored = (state / "keys/tokens" / ("operators" if flags else "tenants") / f"{name}.sha256").read_text()
    assert token not in stored and len(bytes.fromhex(stored.strip())) == 32  # the daemon keeps a hash only
    return token


def test_tokens_on_both_front_doors(tmp_path: Path, model_files: ModelFiles) -> None:
    state = tmp_path / "state"
    alice, bob, ops = issue(state, "alice"), issue(state, "bob"), issue(state, "ops", "--operator")
    with kserve_daemon(tmp_path, auth="keys") as served:
        url = served.url
        http = th.InferenceServerClient(served.http)
        http.load_model("mlp", headers=bearer(alice), files={"file:m.tflite": model_files.mlp.read_bytes()})

        def infer(headers: dict[str, str], model: str = "mlp") -> httpx.Response:
            return httpx.post(f"{url}/v2/models/{model}/infer", json=MLP_INFER, headers=headers)

        assert infer(bearer(alice)).status_code == 200
        # No token, a token nobody issued, another scheme: 401, saying how to authenticate.
        for headers in ({}, bearer("tnd_" + "A" * 43), {"authorization": f"Basic {alice}"}, tenant("alice")):
            reply = infer(headers)
            assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer"), headers
        # Health needs no token (load balancers, Kubernetes probes); metadata and models do.
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{url}/v2").status_code == 401
        # Another tenant's model, and a tenant's token naming another tenant: 403, as on ZeroMQ.
        assert infer(bearer(bob)).status_code == 403
        assert infer({**bearer(bob), **tenant("alice")}).status_code == 403
        assert httpx.get(f"{url}/v2/models/mlp", headers=bearer(bob)).status_code == 403
        assert httpx.post(f"{url}/v2/repository/index", headers=bearer(bob)).json() == []
        # The operator: sees every model, infers for a tenant it names, and may not infer as no one.
        assert [m["name"] for m in httpx.post(f"{url}/v2/repository/index", headers=bearer(ops)).json()] == ["mlp"]
        assert infer({**bearer(ops), **tenant("alice")}).status_code == 200
        assert infer(bearer(ops)).status_code == 403

        grpc_client = tg.InferenceServerClient(served.grpc)
        inp = tg.InferInput("input", [1, 32], "FP32")
        inp.set_data_from_numpy(np.full((1, 32), 0.25, np.float32))
        assert grpc_client.infer("mlp", [inp], headers=bearer(alice)).as_numpy("probs").shape == (1, 10)
        for headers, code in (
            ({}, "UNAUTHENTICATED"),
            (bearer("nope"), "UNAUTHENTICATED"),
            (bearer(bob), "PERMISSION_DENIED"),
            ({**bearer(bob), **tenant("alice")}, "PERMISSION_DENIED"),
        ):
            with pytest.raises(InferenceServerException) as info:
                grpc_client.infer("mlp", [inp], headers=headers)
            assert info.value.status() == f"StatusCode.{code}", headers

        # Revoked: 'tenantd keys remove' and the reload (SIGHUP) that re-reads CurveZMQ keys.
        assert infer({**bearer(ops), **tenant("bob")}).status_code == 403  # bob owns nothing
        keys(state, "remove", "alice")
        assert not (state / "keys/tokens/tenants/alice.sha256").exists()
        assert infer(bearer(alice)).status_code == 200  # until the daemon reloads
        served.process.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while infer(bearer(alice)).status_code != 401:  # a condition wait: the reload is asynchronous
            assert time.monotonic() < deadline, "the removed token still works after SIGHUP"
            time.sleep(0.05)  # ok: polling the condition above, bounded by its deadline
        with pytest.raises(InferenceServerException) as info:
            grpc_client.infer("mlp", [inp], headers=bearer(alice))
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        assert infer(bearer(bob)).status_code == 403  # the others' tokens still work
        # The other reload: the reload_keys operation ('tenantctl keys reload', operator key).
        keys(state, "remove", "bob")
        ops_key = state / "keys/issued/operators/ops.key_secret"
        with TenantClient(served.process.endpoint, key_file=ops_key, server_key=state / "keys/server.key") as op:
            assert "tenant:bob" not in op.reload_keys()
        assert infer(bearer(bob)).status_code == 401
        grpc_client.close()
        http.close()


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--http", "0.0.0.0:0", "--http 0.0.0.0:0 is reachable from other hosts"),  # --auth header (ipc)
        ("--grpc", "0.0.0.0:0", "--grpc 0.0.0.0:0 is reachable from other hosts"),
        ("--http", "8000", "must be HOST:PORT"),
        ("--grpc", "127.0.0.1:PORT_IN_USE", "cannot bind --grpc"),
        ("--http", "127.0.0.1:PORT_IN_USE", "cannot bind --http"),
    ],
)
def test_a_bad_front_door_address_stops_the_daemon_with_one_line(
    tmp_path: Path, flag: str, value: str, says: str
) -> None:
    with socket.socket() as taken:
        # As another daemon's gRPC door would hold it: gRPC sets SO_REUSEPORT by default, which would
        # let a second daemon share the port (and its clients) instead of failing.
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        value = value.replace("PORT_IN_USE", str(taken.getsockname()[1]))
        done = subprocess.run(
            [*SERVE, "--endpoint", f"ipc://{tmp_path}/d.sock", "--state-dir", str(tmp_path / "s"), flag, value],
            capture_output=True,
            text=True,
            timeout=120,
            env=daemon_env(),
            cwd=REPO,
        )
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_on_both_front_doors(tmp_path: Path, model_files: ModelFiles) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [*SELF_SIGNED, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    policy = f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
    with kserve_daemon(tmp_path, policy) as served:
        assert served.scheme == "https" and " grpc=grpcs://" in served.process.ready_line
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as https:
            assert https.get(f"{served.url}/v2/health/ready").status_code == 200
            load = https.post(
                f"{served.url}/v2/repository/models/mlp/load",
                content=model_files.mlp.read_bytes(),
                params={"filename": "m.tflite"},
                headers={**tenant("alice"), "content-type": "application/octet-stream"},
            )
            assert load.status_code == 200, load.text
            assert https.post(f"{served.url}/v2/models/mlp/infer", json=MLP_INFER, headers=tenant("alice")).is_success
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port is not answered
            httpx.get(f"http://{served.http}/v2/health/ready", timeout=10)
        client = tg.InferenceServerClient(served.grpc, ssl=True, root_certificates=str(cert))
        assert client.is_server_ready()
        assert client.get_model_metadata("mlp", headers=tenant("alice"), as_json=True)["name"] == "mlp"
        client.close()
