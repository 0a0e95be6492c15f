"""What the daemon and a device worker say to each other: frames on a socket, tensors in shared memory.

Control messages are frames on an AF_UNIX stream socket: a 4-byte big-endian length, then one JSON
object (small: an operation, an id, tensor layouts; JSON because it is in every Python, where msgpack
may not be installed under a device's own interpreter). Tensor bytes never cross the socket: each
calling thread of the daemon owns a pair of :class:`Arena` files in ``/dev/shm`` (inputs, outputs),
mapped by both processes; a frame says where in an arena each tensor lies.

This module is imported by the worker process (:mod:`tenantd.workermain`), which may run under a
device's own Python (JetPack 4.6: 3.6), so it is written at the Python 3.6 language level with the
standard library and numpy only; ``tests/unit/test_worker_language.py`` checks that with vermin.
"""

# ruff: noqa: UP006, UP035, UP045 - typing.Dict/List/Optional: this module runs on Python 3.6

import json
import mmap
import os
import socket
import struct
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

_LENGTH = struct.Struct("!I")
MAX_FRAME = 16 * 1024 * 1024  # a control frame larger than this is a broken peer
_FIRST_READ = 64 * 1024  # one recv takes a whole frame up to this size (a call's is ~300 bytes)
ALIGN = 64  # tensors start on cache-line boundaries


class PeerGone(Exception):
    """The other end closed the socket (or sent something that is not a frame)."""


def frame(message: Dict[str, Any]) -> bytes:
    """``message`` as a frame: its length, then its JSON."""
    data = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data


def send(sock: socket.socket, message: Dict[str, Any]) -> None:
    sock.sendall(frame(message))


class Memo:
    """Frames that repeat, encoded or decoded once. An inference's call and reply are the same
    frames call after call while the model, the tensor shapes and the arenas stay (only the arena
    contents change), and JSON was about half of the hop's own CPU time (~35 us of ~70 per call
    on the loaded 2-core VM). Bounded: emptied when full. What ``decoded`` returns is shared
    between calls, so its users only read it."""

    LIMIT = 64

    def __init__(self) -> None:
        self._frames: Dict[Any, bytes] = {}
        self._messages: Dict[bytes, Dict[str, Any]] = {}

    def frame(self, key: Any, message: Callable[[], Dict[str, Any]]) -> bytes:
        """The frame of ``message()``, which depends on nothing but ``key``."""
        data = self._frames.get(key)
        if data is None:
            if len(self._frames) >= self.LIMIT:
                self._frames.clear()
            data = self._frames[key] = frame(message())
        return data

    def decoded(self, data: bytes) -> Optional[Dict[str, Any]]:
        return self._messages.get(data)

    def keep(self, data: bytes, message: Dict[str, Any]) -> None:
        if len(self._messages) >= self.LIMIT:
            self._messages.clear()
        self._messages[data] = message


def bound(sock: socket.socket, seconds: float) -> None:
    """Make a blocking socket's receives and sends fail (BlockingIOError) after ``seconds``. The
    kernel keeps the bound (SO_RCVTIMEO/SO_SNDTIMEO): a Python socket timeout would cost an ioctl
    and a poll before every receive and send instead."""
    value = struct.pack("@ll", int(seconds), max(1, int(seconds % 1 * 1e6)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise PeerGone("the peer closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket, memo: Optional[Memo] = None) -> Dict[str, Any]:
    """The next frame. Each connection carries one call and its reply at a time, so whatever is
    waiting on the socket is (the start of) one frame: one ``recv`` reads a whole small frame (a
    call's control frame is a few hundred bytes), where reading the length and then the body took
    two system calls on both sides of every call. With ``memo``, a frame seen before is not parsed
    again (the message returned is shared: read it, never change it)."""
    data = sock.recv(_FIRST_READ)
    if not data:
        raise PeerGone("the peer closed the connection")
    if len(data) < _LENGTH.size:
        data += _read_exactly(sock, _LENGTH.size - len(data))
    (length,) = _LENGTH.unpack_from(data)
    if length > MAX_FRAME:
        raise PeerGone(f"a frame of {length} bytes: the peer is not a tenantd worker")
    have = len(data) - _LENGTH.size
    if have > length:
        raise PeerGone("more than one frame at once: the peer is not a tenantd worker")
    if have == length and memo is not None:
        known = memo.decoded(data)
        if known is not None:
            return known
    body = memoryview(data)[_LENGTH.size :]
    text = str(body, "utf-8") if have == length else str(bytes(body) + _read_exactly(sock, length - have), "utf-8")
    message = json.loads(text)
    if not isinstance(message, dict):
        raise PeerGone("a frame that is not a JSON object")
    if have == length and memo is not None:
        memo.keep(data, message)
    return message


def shm_dir() -> str:
    """Where arenas live: /dev/shm (memory, never disk) where it exists."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else os.environ.get("TMPDIR", "/tmp")


def arena_path(name: str) -> str:
    """An arena's file: named after the daemon's pid, so that ``sweep`` knows whose it is."""
    return os.path.join(shm_dir(), f"tenantd-{os.getpid()}-{name}")


def sweep() -> None:
    """Remove the arenas of daemons that are no longer running."""
    for name in os.listdir(shm_dir()):
        parts = name.split("-")
        if parts[0] != "tenantd" or len(parts) < 3 or not parts[1].isdigit() or parts[-1] not in ("in", "out"):
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(shm_dir(), name))
            except OSError:
                pass
        except OSError:
            pass  # it exists (another user's): not ours to judge


class Arena:
    """A file mapped into memory by both processes, grown on demand (never shrunk). Either side may
    grow it (``reserve``); the other side maps the new size when a frame says so (``attach``)."""

    def __init__(self, path: str, create: bool = False) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        self._fd = os.open(path, flags, 0o600)
        self.size = 0
        self._map: Optional[mmap.mmap] = None
        if not create:
            self.attach(os.fstat(self._fd).st_size)

    def attach(self, size: int) -> None:
        """Map ``size`` bytes (the file was grown to that by the other side or by ``reserve``)."""
        if size == self.size and self._map is not None:
            return
        old, self._map = self._map, (mmap.mmap(self._fd, size) if size else None)
        self.size = size
        if old is not None:
            try:
                old.close()
            except BufferError:
                pass  # a runtime still holds a view of the old mapping; it is freed with that view

    def reserve(self, size: int) -> None:
        """Make the arena at least ``size`` bytes (rounded up to a MiB), growing the file."""
        if size <= self.size:
            return
        size = max(size, 2 * self.size)
        size = (size + 2**20 - 1) // 2**20 * 2**20
        os.ftruncate(self._fd, size)
        self.attach(size)

    def view(self) -> memoryview:
        if self._map is None:
            return memoryview(b"")
        return memoryview(self._map)

    def close(self, unlink: bool = False) -> None:
        self.attach(0)
        os.close(self._fd)
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class Channel:
    """One calling thread's side of the hop: its arenas (inputs, outputs) and repeating frames."""

    def __init__(self, base: str) -> None:
        self.arenas = (Arena(base + "-in", create=True), Arena(base + "-out", create=True))
        self.memo = Memo()

    def infer_call(self, key: str, inputs: List[np.ndarray]) -> Tuple[Dict[str, Any], bytes]:
        """Put ``inputs`` in the input arena; the ``infer`` call for them and its frame."""
        arena_in, arena_out = self.arenas
        places = put(arena_in, inputs)
        message: Dict[str, Any] = {
            "op": "infer",
            "key": key,
            "tensors": places,
            "in": arena_in.path,
            "in_size": arena_in.size,
            "out": arena_out.path,
            "out_size": arena_out.size,
        }
        # The frame depends on nothing else: the arenas' paths are this channel's own.
        layout = (key, arena_in.size, arena_out.size, *((a.dtype.str, a.shape) for a in inputs))
        return message, self.memo.frame(layout, lambda: message)

    def outputs(self, reply: Dict[str, Any]) -> List[np.ndarray]:
        """The outputs an ``infer`` reply placed in the output arena, copied out of it."""
        arena_out = self.arenas[1]
        arena_out.attach(int(reply["out_size"]))
        return get(arena_out, reply["tensors"], copy=True)


def layout(arrays: List[np.ndarray]) -> Tuple[List[Dict[str, Any]], int]:
    """Where each array goes in an arena, and the bytes needed."""
    places = []
    offset = 0
    for array in arrays:
        places.append({"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset})
        offset += (array.nbytes + ALIGN - 1) // ALIGN * ALIGN
    return places, offset


def put(arena: Arena, arrays: List[np.ndarray]) -> List[Dict[str, Any]]:
    """Copy ``arrays`` into ``arena`` (growing it); returns their places, for a frame."""
    places, needed = layout(arrays)
    arena.reserve(needed)
    buffer = arena.view()
    for place, array in zip(places, arrays):  # noqa: B905 - zip(strict=) is 3.10; layout() made one each
        target = np.ndarray(array.shape, array.dtype, buffer=buffer, offset=place["offset"])
        np.copyto(target, array, casting="no")
    return places


def get(arena: Arena, places: List[Dict[str, Any]], copy: bool) -> List[np.ndarray]:
    """The arrays at ``places``: views into the arena, or copies that outlive its next use."""
    buffer = arena.view()
    arrays = []
    for place in places:
        array = np.ndarray(tuple(place["shape"]), np.dtype(place["dtype"]), buffer=buffer, offset=place["offset"])
        arrays.append(array.copy() if copy else array)
    return arrays
