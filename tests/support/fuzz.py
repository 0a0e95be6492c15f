"""Hostile messages for tenantd's front door, and the driver that sends them and checks the answers.

One generator serves the bounded run of the default suite and the long runs behind ``-m slow``
(``tests/e2e/test_fuzz.py``). Every message starts as a valid request of one of the operations,
built against what the daemon under test holds (:class:`FuzzTarget`), and is then damaged the ways
a buggy or hostile client can damage it: header fields given random values of random types,
fields dropped, tensor descriptors with huge shapes and junk encodings, bit flips and truncations
of frames, frames added, dropped, repeated or swapped, an empty REQ-style delimiter in front.

A message is a function of ``(seed, index)`` alone, not of the messages before it, so a failure
is reproduced from those two numbers: ``fuzz_message(target, seed, index)``.

The driver (:func:`run_fuzz`) keeps a window of messages in flight on one DEALER socket and
matches each reply to its message by request id (a multiset: ids may repeat, and every message
whose id cannot be read is answered with id nil). What it reports: messages that got no reply,
replies that matched no message (a second reply), INTERNAL replies, malformed replies, and replies
whose REQ-style delimiter was not echoed.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import lz4.block
import msgpack
import numpy as np
import zmq

from tenantwire import protocol
from tenantwire.errors import ErrorCode, ProtocolError
from tenantwire.protocol import MAX_HEADER_BYTES, MAX_ID_LENGTH, Op
from tenantwire.tensors import WIRE_DTYPES, TensorEncoding, TensorSpec

# Names for models and pipelines that fuzzed submissions may create, replace and remove; the
# target's own models and pipelines are never the base of a remove, so they stay for infers.
SUBMIT_NAMES = ("fz0", "fz1", "fz2")
PIPELINE_NAMES = ("fzp0", "fzp1")
ODD_NAMES = ("", "a" * 65, "../x", "x y", "ünï", "-lead", "a:b", "\x00", "A" * 64)
EXTREME_INTS = (-1, 0, 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63))
ODD_FLOATS = (0.0, -0.0, 1.5, -1.5, 1e-300, 1e308, math.inf, -math.inf, math.nan)
HUGE_SHAPES = (
    [2**31, 2**31],
    [0, 2**63],
    [0, 2**64 - 1],
    [0, 2**40, 2**40],
    [10**6] * 8,
    [1] * 9,
    [2**62],
    [-1, 4],
    [1, 2**30],
)
ENCODING_PARTS = ("zlib", "lz4", "float16", "int8", "bogus", "", None)
# Runtimes a submission may name (a fuzzed one names these, or junk).
RUNTIMES = ("litert", "onnxruntime", "openvino", "tensorrt", "edgetpu")
# What the fuzzed daemon's policy caps a message at (tests/e2e/test_fuzz.py writes it): a few
# messages are made larger, to be refused TOO_LARGE.
FUZZ_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class FuzzTarget:
    """What the daemon under test holds, so that valid requests can be built and then damaged."""

    models: Mapping[str, tuple[str, tuple[TensorSpec, ...]]]  # name -> (owner, inputs)
    pipelines: Mapping[str, tuple[str, str]]  # name -> (owner, edge model)
    uplink: str  # the uplink the policy configures for pipelines
    model_files: tuple[bytes, ...]  # small valid model files, for submit_model
    policy_toml: str  # the policy the daemon started with
    max_message_bytes: int = FUZZ_MAX_MESSAGE_BYTES

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(sorted({owner for owner, _ in self.models.values()}))


@dataclass(frozen=True)
class FuzzMessage:
    seed: int
    index: int
    label: str  # the base operation and the damage done, e.g. "infer+bitflip+delimiter"
    frames: tuple[bytes, ...]

    @property
    def delimited(self) -> bool:
        """Sent REQ-style: the daemon takes the empty first frame as the envelope's delimiter."""
        return bool(self.frames) and self.frames[0] == b""

    def expected_id(self) -> Any:
        """The id the reply must carry: the request's, where it can be read, else None.

        Written from docs/protocol.md (sections 4 and 6), not from the daemon's code: the header
        frame (after the delimiter) must be at most 64 KiB of msgpack holding a map whose ``id``
        is a non-empty str of at most 128 characters or an int in -2**63..2**64-1, not a bool."""
        body = self.frames[1:] if self.delimited else self.frames
        if not body or len(body[0]) > MAX_HEADER_BYTES:
            return None
        try:
            header = msgpack.unpackb(body[0], raw=False, strict_map_key=True)
        except Exception:  # noqa: BLE001 - msgpack raises several unrelated types for garbage
            return None
        if not isinstance(header, dict):
            return None
        rid = header.get("id")
        if isinstance(rid, bool):
            return None
        if isinstance(rid, int) and -(2**63) <= rid < 2**64:
            return rid
        if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_LENGTH:
            return rid
        return None

    @property
    def op(self) -> Any:
        """The operation the header names, where it can be read."""
        body = self.frames[1:] if self.delimited else self.frames
        try:
            header = msgpack.unpackb(body[0], raw=False) if body else None
        except Exception:  # noqa: BLE001 - msgpack raises several unrelated types for garbage
            return None
        return header.get("op") if isinstance(header, dict) else None

    def describe(self, limit: int = 600) -> str:
        text = repr(list(self.frames))
        if len(text) > limit:
            text = text[:limit] + f"... ({sum(map(len, self.frames))} bytes in {len(self.frames)} frames)"
        return f"seed={self.seed} index={self.index} [{self.label}]: {text}"


# --------------------------------------------------------------------------- building blocks


@dataclass(frozen=True)
class Raw:
    """Bytes put into a message as they are: msgpack that ``msgpack.packb`` will not write
    (nesting deeper than its limit, ext types, float32), to reach the daemon's decoder."""

    data: bytes


def pack(value: Any) -> bytes:
    """msgpack, like ``packb(use_bin_type=True)``, except that :class:`Raw` values go in as they are."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, dict):
        n = len(value)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(pack(k) + pack(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        n = len(value)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(pack(v) for v in value)
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _text(rng: random.Random, n: int) -> str:
    alphabet = "abcxyz019_-.:/ \u00e9\u4e2d\U0001f600"
    return "".join(rng.choice(alphabet) for _ in range(n))


def junk(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack value of a random type: the values a header field should never hold."""
    kind = rng.randrange(16)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-3, 8)
    if kind == 3:
        return rng.choice(EXTREME_INTS)
    if kind == 4:
        return rng.choice(ODD_FLOATS)
    if kind == 5:
        return _text(rng, rng.randint(1, 8))
    if kind == 6:
        return _text(rng, rng.randint(120, 300))
    if kind == 7:
        return ""
    if kind == 8:
        return rng.randbytes(rng.randint(0, 16))
    if kind == 9 and depth < 3:
        return [junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 10 and depth < 3:
        return {_text(rng, rng.randint(0, 5)): junk(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if kind == 11:
        # Nested past any sensible depth (msgpack's own C decoder stops at 1024 levels).
        levels = rng.choice([100, 600, 1100, 5000])
        return Raw(b"\x91" * levels + b"\xc0")
    if kind == 12:
        # An ext type, a timestamp with a junk payload, a float32, a bin where a str belongs.
        return Raw(rng.choice([b"\xd4\x05\x00", b"\xd6\xff\xff\xff\xff\xff", b"\xca\x7f\xc0\x00\x00", b"\xc4\x03abc"]))
    if kind == 13:
        return rng.choice(ODD_NAMES)
    if kind == 14:
        return {rng.randint(0, 3): None}  # a map with a non-string key
    return rng.choice(["alice", "bob", "litert", "zlib", "infer", "ping", "float32", SUBMIT_NAMES[0]])


def _array(rng: random.Random, spec: TensorSpec) -> np.ndarray:
    shape = [d if d >= 0 else rng.randint(1, 3) for d in spec.shape]
    data = np.random.default_rng(rng.getrandbits(32)).standard_normal(shape)
    if np.dtype(spec.dtype).kind in "iu":
        info = np.iinfo(spec.dtype)
        return np.clip(data * 40, info.min, info.max).astype(spec.dtype)
    return data.astype(spec.dtype)


# --------------------------------------------------------------------------- valid requests


def _tenant_and_model(rng: random.Random, target: FuzzTarget) -> tuple[str, str, tuple[TensorSpec, ...]]:
    name = rng.choice(sorted(target.models))
    owner, inputs = target.models[name]
    return owner, name, inputs


def _infer(rng: random.Random, target: FuzzTarget, rid: Any) -> tuple[list[bytes], str]:
    use_pipeline = target.pipelines and rng.random() < 0.15
    if use_pipeline:
        name = rng.choice(sorted(target.pipelines))
        owner, edge = target.pipelines[name]
        inputs = target.models[edge][1]
    else:
        owner, name, inputs = _tenant_and_model(rng, target)
    tensors: list[tuple[str | None, np.ndarray]] = [(s.name, _array(rng, s)) for s in inputs]
    if len(tensors) == 1 and rng.random() < 0.3:
        tensors = [(None, tensors[0][1])]
    rng.shuffle(tensors)
    encoding = None
    if rng.random() < 0.3:
        encoding = TensorEncoding(rng.choice([None, "float16", "int8"]), rng.choice([None, "zlib", "lz4"]))
    deadline = rng.choice([None, None, None, None, 0.0, 5000.0, 1e308, math.inf])
    frames = protocol.encode_request(
        Op.INFER, rid, tenant=owner, args={"model": name}, tensors=tensors, deadline_ms=deadline, encoding=encoding
    )
    label = "infer-pipeline" if use_pipeline else "infer"
    return [bytes(memoryview(f).cast("B")) for f in frames], label


def _policy_toml(rng: random.Random, target: FuzzTarget) -> str:
    """Policy text for policy_set: the policy in force, valid changes to it, and junk. Top-level
    keys go first: after the policy's tables they would belong to the last table."""
    base = target.policy_toml
    choice = rng.randrange(8)
    if choice == 0:
        return base  # valid: the policy in force, unchanged
    if choice == 1:
        # Valid, and harmless to the rest of the run (the test restores the policy at its end).
        return rng.choice(['discipline = "weighted-fair"\n', "queue_depth_per_tenant = 8\n", ""]) + base
    if choice == 2:
        # Valid TOML, but fields a running daemon cannot change.
        return rng.choice(["slots = 7\n", "max_message_bytes = 2048\n", 'overcommit = "swap"\n']) + base
    if choice == 3:
        return (
            rng.choice(
                [
                    "queue_depth_total = -1\n",
                    "slots = true\n",
                    'probe_timeout_s = "x"\n',
                    "[tenants.alice]\nweight = 0\n",
                ]
            )
            + base
        )
    if choice == 4:
        return rng.choice(["[", "a = ", "= 1", "x = [1, 2", '"\\u0000" = 1', "\x00", "[[a]]\n[a]\n"])
    if choice == 5:
        return "a = " + "[" * rng.choice([10, 500, 3000]) + "]" * rng.choice([0, 10])
    if choice == 6:
        return _text(rng, rng.randint(1, 200))
    return base.replace("=", rng.choice([":", "==", ""]), 1)


def _pipeline_spec(rng: random.Random, target: FuzzTarget, owner: str) -> dict[str, Any]:
    edges = [m for m, (o, _) in target.models.items() if o == owner] or sorted(target.models)
    spec: dict[str, Any] = {
        "kind": "cascade",
        "edge_model": rng.choice(edges),
        "uplink": target.uplink,
        "cloud_model": "cloud_mlp",
        "threshold": rng.choice([0.0, 0.5, 1.0]),
        "on_cloud_failure": rng.choice(["error", "edge"]),
        "encoding": rng.choice(["none", "int8+zlib", "float16+lz4"]),
        # Kept short: the cloud is down, and a tenant may ask a pipeline to wait for it as long
        # as it likes (the request is then answered after that wait, which a bounded run cannot).
        "timeout_ms": rng.choice([1.0, 20.0, 100.0]),
    }
    if rng.random() < 0.3:
        spec = {"kind": "split", **{k: spec[k] for k in ("edge_model", "uplink", "cloud_model", "encoding")}}
    return spec


def valid_request(rng: random.Random, target: FuzzTarget, rid: Any) -> tuple[list[bytes], str]:
    """The frames of a valid request of a random operation, and the operation's name."""
    ops = [o.value for o in Op if o is not Op.INFER]
    # Inference is what tenants send most, and the path with tensors: give it half the messages.
    op = Op.INFER.value if rng.random() < 0.4 else rng.choice(ops)
    if op == Op.INFER:
        return _infer(rng, target, rid)
    tenant: str | None = rng.choice([None, *target.tenants])
    args: dict[str, Any] = {}
    blobs: list[bytes] = []
    if op == Op.SUBMIT_MODEL:
        tenant = rng.choice(target.tenants)
        args = {"name": rng.choice(SUBMIT_NAMES), "replace": rng.random() < 0.7}
        if rng.random() < 0.5:
            args["runtime"] = rng.choice(["litert", *RUNTIMES])
        if rng.random() < 0.3:
            args["filename"] = rng.choice(["m.tflite", "m.onnx", "m.xml", "m.ovir", "m", "m.engine"])
        model = rng.choice(target.model_files)
        kind = rng.randrange(4)
        # A valid model, one cut short, one with flipped bytes, or a few random bytes.
        if kind == 1:
            model = model[: rng.randint(1, len(model) - 1)]
        elif kind == 2:
            damaged = bytearray(model)
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
            model = bytes(damaged)
        elif kind == 3:
            model = rng.randbytes(rng.randint(1, 64))
        blobs = [model]
    elif op == Op.REMOVE_MODEL:
        args = {"model": rng.choice([*SUBMIT_NAMES, "no_such_model"])}
    elif op == Op.EVENTS:
        args = {"limit": rng.choice([1, 10, 100, 10_000])}
        if rng.random() < 0.5:
            args["event"] = rng.choice(["request.error", "start", "model.loaded", "nope"])
    elif op == Op.POLICY_SET:
        tenant = None
        args = {"toml": _policy_toml(rng, target)}
    elif op == Op.PIPELINE_SET:
        tenant = rng.choice(target.tenants)
        args = {"name": rng.choice(PIPELINE_NAMES), "spec": _pipeline_spec(rng, target, tenant)}
        if rng.random() < 0.7:
            args["replace"] = True
    elif op == Op.PIPELINE_REMOVE:
        args = {"name": rng.choice([*PIPELINE_NAMES, "no_such_pipeline"])}
    frames = protocol.encode_request(op, rid, tenant=tenant, args=args, blobs=blobs)
    return [bytes(memoryview(f).cast("B")) for f in frames], op


# --------------------------------------------------------------------------- damage

HEADER_KEYS = ("v", "id", "op", "tenant", "args", "tensors", "deadline_ms")
ARG_KEYS = ("model", "name", "runtime", "filename", "replace", "limit", "event", "toml", "spec")


def _junk_encoding(rng: random.Random) -> Any:
    if rng.random() < 0.2:
        return junk(rng)
    encoding: dict[str, Any] = {}
    for key in ("codec", "lossy"):
        if rng.random() < 0.7:
            encoding[key] = rng.choice(ENCODING_PARTS)
    if rng.random() < 0.6:
        encoding["scale"] = rng.choice([*ODD_FLOATS, 0.01, "x", None, 2**64 - 1])
    if rng.random() < 0.6:
        encoding["zero_point"] = rng.choice([-129, -128, 0, 127, 128, 2**63, True, 0.5, None])
    return encoding


def _damage_tensor_meta(rng: random.Random, header: dict[Any, Any], frames: list[bytes]) -> str:
    metas = header.get("tensors")
    if not isinstance(metas, list) or not metas:
        metas = [{"name": None, "dtype": "float32", "shape": [1], "frame": len(frames) - 1}]
        header["tensors"] = metas
    meta = rng.choice(metas)
    if not isinstance(meta, dict):
        return "tensor-meta"
    what = rng.randrange(9)
    if what == 0:
        meta["shape"] = list(rng.choice(HUGE_SHAPES))
        return "huge-shape"
    if what == 1:
        meta["dtype"] = rng.choice([*sorted(WIRE_DTYPES), "object", "float128", "complex64", "<f4", "V8", "S1"])
        return "dtype"
    if what == 2:
        meta["frame"] = rng.choice([-1, 0, 1, 2, 63, 64, 2**63, True, None, "0", 0.0])
        return "frame-index"
    if what == 3:
        meta["encoding"] = _junk_encoding(rng)
        return "junk-encoding"
    if what == 4:
        # Packed bytes that unpack to the declared size, or not: zlib bombs, lz4 with junk.
        meta["encoding"] = {"codec": rng.choice(["zlib", "lz4"])}
        payload = rng.choice([b"\x00" * rng.choice([1, 1000, 4 * 2**20]), rng.randbytes(rng.randint(0, 64))])
        index = meta.get("frame")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(frames) - 1:
            codec = meta["encoding"]["codec"]
            packed = zlib.compress(payload) if codec == "zlib" else lz4.block.compress(payload, store_size=False)
            frames[1 + index] = packed if rng.random() < 0.7 else rng.randbytes(len(packed))
        return "packed"
    if what == 5:
        metas.extend(dict(meta) for _ in range(rng.choice([1, 64])))  # the same frame twice; more than 64 tensors
        return "extra-metas"
    if what == 6:
        meta[rng.choice(["name", "dtype", "shape", "frame"])] = junk(rng)
        return "meta-junk"
    if what == 7:
        if meta:
            del meta[rng.choice(list(meta))]
        return "meta-drop"
    meta["shape"] = [junk(rng) for _ in range(rng.randint(0, 3))]
    return "shape-junk"


def _damage_header(rng: random.Random, header: dict[Any, Any], frames: list[bytes], target: FuzzTarget) -> str:
    what = rng.randrange(10)
    if what == 0:
        header[rng.choice(HEADER_KEYS)] = junk(rng)
        return "field-junk"
    if what == 1:
        key = rng.choice(HEADER_KEYS)
        header.pop(key, None)
        return f"drop-{key}"
    if what == 2:
        args = header.get("args")
        if not isinstance(args, dict):
            args = header["args"] = {}
        key = rng.choice(ARG_KEYS)
        if rng.random() < 0.2:
            args.pop(key, None)
        else:
            args[key] = junk(rng)
        return "arg-junk"
    if what == 3:
        return _damage_tensor_meta(rng, header, frames)
    if what == 4:
        # Not the removals: an infer's args turned into a remove_model would remove a seeded model,
        # which is right, but leaves the rest of the run nothing to infer on.
        removals = (Op.REMOVE_MODEL, Op.PIPELINE_REMOVE)
        header["op"] = rng.choice([*(o.value for o in Op if o not in removals), "launch", "INFER", "ping\x00"])
        return "other-op"
    if what == 5:
        header["tenant"] = rng.choice([None, *target.tenants, *ODD_NAMES])
        return "other-tenant"
    if what == 6:
        header["v"] = rng.choice([0, 2, -1, 2**64 - 1, 1.0, True, "1", None])
        return "version"
    if what == 7:
        header["id"] = rng.choice([None, True, 1.5, "", "x" * 129, "x" * 128, 2**64 - 1, -(2**63), -(2**63) - 1, b"i"])
        return "id"
    if what == 8:
        # An extra key, maybe not a str (a map key must be one).
        key = rng.choice([_text(rng, 4), _text(rng, 4), 7, None, True, b"id", 1.5, ""])
        header[key] = junk(rng)
        return "extra-key"
    header["deadline_ms"] = rng.choice([-1, -0.0, math.nan, math.inf, 2**64 - 1, "5", True, 1e-9])
    return "deadline"


def _damage_frames(rng: random.Random, frames: list[bytes], target: FuzzTarget) -> str:
    what = rng.randrange(10)
    index = 0 if rng.random() < 0.6 else rng.randrange(len(frames))
    if what == 0:
        data = bytearray(frames[index])
        for _ in range(rng.choice([1, 1, 2, 8])):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        frames[index] = bytes(data)
        return "bitflip"
    if what == 1:
        frames[index] = frames[index][: rng.randint(0, max(0, len(frames[index]) - 1))]
        return "truncate"
    if what == 2:
        frames[index] = frames[index] + rng.randbytes(rng.randint(1, 16))
        return "extend"
    if what == 3:
        frames.insert(rng.randint(1, len(frames)), rng.choice([b"", rng.randbytes(rng.randint(1, 64))]))
        return "extra-frame"
    if what == 4:
        if len(frames) > 1:
            del frames[rng.randrange(1, len(frames))]
        else:
            frames.append(b"")
        return "missing-frame"
    if what == 5:
        frames.insert(index, frames[index])
        return "repeat-frame"
    if what == 6 and len(frames) > 1:
        i, j = rng.sample(range(len(frames)), 2)
        frames[i], frames[j] = frames[j], frames[i]
        return "swap-frames"
    if what == 7:
        frames[0] = rng.choice([b"", b"\xc1", b"\x93\x01\x02\x03", rng.randbytes(rng.randint(1, 32)), b"\x80"])
        return "header-garbage"
    if what == 8:
        # A header over the 64 KiB limit (TOO_LARGE, its id unread), or a message over the
        # daemon's cap (TOO_LARGE, its id read if the header allows).
        if rng.random() < 0.9:
            header = msgpack.unpackb(frames[0], raw=False) if _is_map(frames[0]) else {}
            header["pad"] = "p" * (MAX_HEADER_BYTES + rng.choice([-200, 1, 5000]))
            frames[0] = msgpack.packb(header, use_bin_type=True)
            return "big-header"
        frames.append(b"\x00" * (target.max_message_bytes + 1))
        return "too-large"
    frames[:] = [frames[0]] if rng.random() < 0.5 else frames[:1] + frames[1:][::-1]
    return "frames-cut"


def _is_map(raw: bytes) -> bool:
    try:
        return isinstance(msgpack.unpackb(raw, raw=False), dict)
    except Exception:  # noqa: BLE001 - msgpack raises several unrelated types for garbage
        return False


def fuzz_message(target: FuzzTarget, seed: int, index: int) -> FuzzMessage:
    """Message ``index`` of the run seeded ``seed``: a valid request, most often damaged."""
    rng = random.Random(f"tenantd-fuzz:{seed}:{index}")
    rid: Any = f"s{seed}-{index}" if rng.random() < 0.8 else seed * 10_000_000 + index
    frames, op = valid_request(rng, target, rid)
    labels = [op]
    header: dict[Any, Any] = msgpack.unpackb(frames[0], raw=False)
    # About one message in five goes out undamaged: the operations must also get far enough to act.
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        labels.append(_damage_header(rng, header, frames, target))
    try:
        frames[0] = pack(header)
    except (ValueError, OverflowError, TypeError):
        labels.append("unpackable")  # e.g. a value msgpack cannot hold: send the undamaged header
    for _ in range(rng.choice([0, 0, 0, 0, 1, 1, 2])):
        labels.append(_damage_frames(rng, frames, target))
    if rng.random() < 0.1:
        frames.insert(0, b"")
        labels.append("delimiter")
    return FuzzMessage(seed, index, "+".join(labels), tuple(frames))


# --------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class KnownBug:
    """A daemon bug this fuzzer found, kept as a strict xfail test with its minimal repro until it
    is fixed. Its INTERNAL replies are reported apart instead of failing every run; the fix
    removes the entry (its xfail test then passes and, being strict, fails until it is)."""

    test: str  # the xfail test holding the repro
    op: str
    fragment: str  # in the INTERNAL reply's message

    def matches(self, message: FuzzMessage, error: str) -> bool:
        return message.op == self.op and self.fragment in error


KNOWN_BUGS: tuple[KnownBug, ...] = ()  # none open: deeply nested policy TOML is now BAD_REQUEST


@dataclass
class FuzzRun:
    """What a run saw. ``ok()`` is the property: every message answered once, nothing INTERNAL."""

    sent: int = 0
    codes: Counter[str] = field(default_factory=Counter)  # "ok" or the error code, per reply
    served: Counter[str] = field(default_factory=Counter)  # ok replies per operation the message began as
    unanswered: list[FuzzMessage] = field(default_factory=list)
    unexpected: list[dict[str, Any]] = field(default_factory=list)  # reply headers that matched no message
    internal: list[tuple[FuzzMessage, str]] = field(default_factory=list)
    known: Counter[str] = field(default_factory=Counter)  # INTERNAL replies of a KNOWN_BUGS entry, per test
    malformed: list[str] = field(default_factory=list)
    envelope: list[FuzzMessage] = field(default_factory=list)  # the REQ delimiter not echoed (or echoed unasked)

    def ok(self) -> bool:
        return not (self.unanswered or self.unexpected or self.internal or self.malformed or self.envelope)

    def summary(self) -> str:
        lines = [
            f"{self.sent} messages sent; replies by code: {dict(sorted(self.codes.items()))}",
            f"served, by operation: {dict(sorted(self.served.items()))}",
        ]
        if self.known:
            lines.append(f"INTERNAL replies of known bugs (strict xfail tests): {dict(self.known)}")
        for what, items in (
            ("no reply", [m.describe() for m in self.unanswered]),
            ("INTERNAL", [f"{m.describe()} -> {text}" for m, text in self.internal]),
            ("reply to no message", [repr(h)[:300] for h in self.unexpected]),
            ("malformed reply", self.malformed),
            ("delimiter not echoed", [m.describe() for m in self.envelope]),
        ):
            if items:
                lines.append(f"{len(items)} with {what}:")
                lines.extend(f"  {item}" for item in items[:20])
        return "\n".join(lines)


def _id_key(rid: Any) -> tuple[str, Any]:
    return ("nil", None) if rid is None else (type(rid).__name__, rid)


def run_fuzz(
    endpoint: str,
    target: FuzzTarget,
    seed: int,
    indexes: range,
    *,
    window: int = 16,
    stall_s: float = 60.0,
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
) -> FuzzRun:
    """Send messages ``indexes`` of run ``seed`` to ``endpoint``, up to ``window`` awaiting
    their replies at once, and check the replies. Gives up (reporting what is unanswered) when no
    reply comes for ``stall_s``: every message the generator makes is answered within seconds
    (the slowest are probes and the down cloud's timeouts, both bounded by the test's policy)."""
    sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    run = FuzzRun()
    pending: dict[tuple[str, Any], deque[FuzzMessage]] = {}
    outstanding = 0
    todo = iter(indexes)
    exhausted = False
    try:
        while True:
            while not exhausted and outstanding < window:
                index = next(todo, None)
                if index is None:
                    exhausted = True
                    break
                message = fuzz_message(target, seed, index)
                sock.send_multipart(list(message.frames))
                run.sent += 1
                key = _id_key(message.expected_id())
                pending.setdefault(key, deque()).append(message)
                outstanding += 1
            if outstanding == 0:
                break
            if not sock.poll(int(stall_s * 1000)):
                run.unanswered.extend(m for queue in pending.values() for m in queue)
                break
            outstanding -= _take_reply(sock.recv_multipart(), pending, run)
        # A second reply to a message already answered would arrive about when the first did.
        while sock.poll(200):
            outstanding -= _take_reply(sock.recv_multipart(), pending, run)
    finally:
        sock.close()
    return run


def _take_reply(frames: list[bytes], pending: dict[tuple[str, Any], deque[FuzzMessage]], run: FuzzRun) -> int:
    """Match one reply to a message awaiting it; returns how many messages it settled (0 or 1)."""
    delimited = bool(frames) and frames[0] == b""
    body = frames[1:] if delimited else frames
    try:
        reply = protocol.decode_reply(body)
    except (ProtocolError, ValueError, TypeError) as exc:
        run.malformed.append(f"{exc!r}: {[f[:80] for f in frames]!r}")
        return 0
    queue = pending.get(_id_key(reply.id))
    if not queue:
        run.unexpected.append(msgpack.unpackb(body[0], raw=False))
        return 0
    # Of the messages with this id, the oldest sent in the same envelope (ids may repeat).
    message = next((m for m in queue if m.delimited == delimited), None)
    if message is None:
        message = queue[0]
        run.envelope.append(message)
    queue.remove(message)
    code = "ok" if reply.ok else str(reply.error_code)
    run.codes[code] += 1
    if reply.ok:
        run.served[message.label.split("+", 1)[0]] += 1
    if code == ErrorCode.INTERNAL:
        bug = next((b for b in KNOWN_BUGS if b.matches(message, reply.error_message)), None)
        if bug is None:
            run.internal.append((message, reply.error_message))
        else:
            run.known[bug.test] += 1
    elif not reply.ok and code not in ErrorCode.__members__:
        run.malformed.append(f"unknown error code {code!r} for {message.describe()}")
    return 1


def answered_alone(endpoint: str, message: FuzzMessage, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """Send one message on a socket of its own and return its reply header, or None if none came:
    how a message found unanswered in a run (whose id may be nil) is pinned down."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(list(message.frames))
        if not sock.poll(int(timeout_s * 1000)):
            return None
        frames = sock.recv_multipart()
        body = frames[1:] if frames and frames[0] == b"" else frames
        header: dict[str, Any] = msgpack.unpackb(body[0], raw=False)
        return header
    finally:
        sock.close()
