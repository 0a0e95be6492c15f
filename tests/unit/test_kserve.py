"""Unit tests of what the KServe front doors share: the status table for every error code, the
tensor decoding checks, and bearer tokens on disk."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import grpc
import numpy as np
import pytest

from tenantd import cli, tokens
from tenantd.auth import AuthConfigError, Identity
from tenantd.errors import BadRequest
from tenantd.frontdoors.http import error_response
from tenantd.frontdoors.kserve import (
    DATATYPES,
    STATUS,
    BodyStalled,
    Unauthenticated,
    datatype_of,
    status_of,
    tensor_from_bytes,
    tensor_from_list,
)
from tenantwire.errors import ErrorCode, TenantdError

EXPECTED_HTTP = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.INPUT_MISMATCH: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.INTERNAL: 500,
}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_has_an_http_status_and_a_grpc_code(code: ErrorCode) -> None:
    status = STATUS[code]
    assert isinstance(grpc.StatusCode[status.grpc], grpc.StatusCode)
    assert status.grpc != "OK" and 400 <= status.http < 600
    if code in EXPECTED_HTTP:
        assert status.http == EXPECTED_HTTP[code]
    response = error_response(TenantdError(code, f"refused: {code.value}"))
    assert response.status == status.http
    assert response.text is not None and json.loads(response.text) == {"error": f"refused: {code.value}"}
    assert ("Retry-After" in response.headers) is (
        code in (ErrorCode.QUEUE_FULL, ErrorCode.UNAVAILABLE, ErrorCode.DEVICE_UNAVAILABLE)
    )


def test_no_credentials_is_401_with_a_challenge_and_unauthenticated_on_grpc() -> None:
    error = Unauthenticated("no token")
    assert error.code is ErrorCode.FORBIDDEN  # what tenantd's own wire would say
    assert (status_of(error).http, status_of(error).grpc) == (401, "UNAUTHENTICATED")
    assert error_response(error).headers["WWW-Authenticate"].startswith("Bearer")
    stalled = BodyStalled("no byte for 60 s")
    assert stalled.code is ErrorCode.BAD_REQUEST and error_response(stalled).status == 408


def test_tensors_from_bytes_and_lists() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(tensor_from_bytes(x.tobytes(), "FP32", [2, 3], "in"), x)
    np.testing.assert_array_equal(tensor_from_list(x.tolist(), "FP32", [2, 3], "in"), x)  # nested
    np.testing.assert_array_equal(tensor_from_list(x.reshape(-1).tolist(), "FP32", [2, 3], "in"), x)  # flat
    assert tensor_from_list([True, False], "BOOL", [2], "in").dtype == np.bool_
    for bad in (
        lambda: tensor_from_bytes(x.tobytes()[:-1], "FP32", [2, 3], "in"),
        lambda: tensor_from_bytes(x.tobytes(), "BYTES", [2, 3], "in"),
        lambda: tensor_from_bytes(x.tobytes(), "FP32", [2, -3], "in"),
        lambda: tensor_from_list([1, 2], "FP32", [2, 3], "in"),
        lambda: tensor_from_list(["a"] * 6, "FP32", [2, 3], "in"),
        lambda: tensor_from_list([1, 0], "BOOL", [2], "in"),
        lambda: tensor_from_list(["1.5", 2], "FP32", [2], "in"),  # numpy alone would take these
        lambda: tensor_from_list([True, 2.0], "FP32", [2], "in"),
        lambda: tensor_from_list([1.5, 2], "INT32", [2], "in"),
        lambda: tensor_from_list([300, 2], "UINT8", [2], "in"),
        lambda: tensor_from_list([[[[[[[[[[1]]]]]]]]]], "FP32", [1], "in"),
        lambda: tensor_from_list("123456", "FP32", [2, 3], "in"),
    ):
        with pytest.raises(BadRequest):
            bad()
    for datatype, dtype in DATATYPES.items():
        assert datatype_of(np.zeros(1, dtype)) == datatype


def test_tokens_are_issued_found_by_hash_and_withdrawn(tmp_path: Path) -> None:
    path = tokens.issue_token(tmp_path, "alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = tokens.read_token(path)
    assert token.startswith(tokens.TOKEN_PREFIX) and len(token) > 40
    ring = tokens.TokenRing.load(tmp_path)
    assert ring.identity_for(token) == Identity("alice", "tenant")
    assert ring.identity_for(token[:-1]) is None and ring.identity_for("") is None
    ops = tokens.read_token(tokens.issue_token(tmp_path, "ops", "operator"))
    renewed = tokens.read_token(tokens.issue_token(tmp_path, "alice"))  # a new token replaces the old
    ring.reload()
    assert ring.identity_for(ops) == Identity("ops", "operator")
    assert ring.identity_for(renewed) == Identity("alice", "tenant") and ring.identity_for(token) is None
    assert tokens.remove_token(tmp_path, "alice") and not tokens.remove_token(tmp_path, "alice")
    ring.reload()
    assert ring.identity_for(renewed) is None and len(ring) == 1


def test_a_damaged_token_folder_keeps_the_tokens_loaded_before(tmp_path: Path) -> None:
    token = tokens.read_token(tokens.issue_token(tmp_path, "alice"))
    ring = tokens.TokenRing.load(tmp_path)
    (tmp_path / "keys/tokens/tenants/bob.sha256").write_text("not hex\n")
    with pytest.raises(AuthConfigError, match=r"bob\.sha256"):
        ring.reload()
    assert ring.identity_for(token) == Identity("alice", "tenant")


def test_the_committed_generated_code_is_what_the_proto_generates(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    root = Path(__file__).resolve().parents[2]
    proto = "tenantd/frontdoors/proto/kserve_v2.proto"
    (tmp_path / proto).parent.mkdir(parents=True)
    (tmp_path / proto).write_bytes((root / proto).read_bytes())
    args = ["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", str(tmp_path / proto)]
    assert protoc.main(args) == 0
    for suffix in ("_pb2.py", "_pb2.pyi"):
        generated = proto.replace(".proto", suffix)
        assert (tmp_path / generated).read_text() == (root / generated).read_text(), f"regenerate {generated}"


def test_tenantd_keys_issues_tokens_with_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    assert cli.main(["keys", "add", "alice", "--state-dir", state, "--json"]) == 0
    first = tokens.read_token(json.loads(capsys.readouterr().out)["token_file"])
    ring = tokens.TokenRing.load(state)
    assert ring.identity_for(first) == Identity("alice", "tenant")
    # A new token for a key issued before tokens existed, or one that leaked.
    assert cli.main(["keys", "token", "alice", "--state-dir", state, "--json"]) == 0
    second = tokens.read_token(json.loads(capsys.readouterr().out)["token_file"])
    ring.reload()
    assert second != first and ring.identity_for(second) is not None and ring.identity_for(first) is None
    assert cli.main(["keys", "token", "bob", "--state-dir", state]) == 2
    assert "no tenant named 'bob'" in capsys.readouterr().err
    assert cli.main(["keys", "remove", "alice", "--state-dir", state]) == 0
    ring.reload()
    assert len(ring) == 0 and not list((tmp_path / "state/keys/issued/tenants").glob("alice.*"))
