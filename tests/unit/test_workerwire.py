"""The worker's frames on a real socket pair: one recv takes a whole small frame, and frames that
arrive in pieces (a large one, or a length split across reads) are still read whole."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tenantd import workerwire


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def test_a_frame_round_trips(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    message = {"op": "infer", "key": "1:m.tflite", "tensors": [{"dtype": "|u1", "shape": [1, 224, 224, 3]}]}
    workerwire.send(a, message)
    assert workerwire.recv(b) == message


def test_a_frame_larger_than_the_first_read_is_read_whole(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    message = {"facts": "x" * (3 * workerwire._FIRST_READ)}  # more than one recv, more than a socket buffer
    sender = threading.Thread(target=workerwire.send, args=(a, message))
    sender.start()
    assert workerwire.recv(b) == message
    sender.join()


def test_a_frame_whose_length_arrives_in_pieces_is_read_whole(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    body = b'{"ok":true}'
    frame = struct.pack("!I", len(body)) + body

    def dribble() -> None:
        for i in range(len(frame)):
            a.send(frame[i : i + 1])
            time.sleep(0.002)  # ok: separate sends, so the reader sees the frame in pieces

    sender = threading.Thread(target=dribble)
    sender.start()
    assert workerwire.recv(b) == {"ok": True}
    sender.join()


def test_two_frames_at_once_are_a_broken_peer(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    body = b'{"ok":true}'
    a.sendall((struct.pack("!I", len(body)) + body) * 2)
    with pytest.raises(workerwire.PeerGone, match="more than one frame"):
        workerwire.recv(b)


def test_a_closed_peer_is_peer_gone(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(b"\x00\x00")  # half a length, then the end
    a.close()
    with pytest.raises(workerwire.PeerGone, match="closed"):
        workerwire.recv(b)


def test_the_bound_ends_a_receive_that_gets_no_reply(pair: tuple[socket.socket, socket.socket]) -> None:
    _, b = pair
    workerwire.bound(b, 0.05)
    assert b.gettimeout() is None  # still a blocking socket: no poll before each call
    with pytest.raises(BlockingIOError):
        workerwire.recv(b)


def test_a_channel_reuses_an_inference_frame_only_while_its_layout_stays(tmp_path: Path) -> None:
    channel = workerwire.Channel(str(tmp_path / "arena"))
    try:
        one = np.arange(12, dtype=np.float32).reshape(1, 12)
        message, frame = channel.infer_call("1:m.tflite", [one])
        again, same = channel.infer_call("1:m.tflite", [one + 1])
        assert same is frame  # the same bytes: not encoded again
        batch = np.zeros((3, 12), np.float32)  # a batch: another layout, another frame
        _, other = channel.infer_call("1:m.tflite", [batch])
        assert other != frame
        assert json.loads(other[4:])["tensors"] == [{"dtype": "<f4", "shape": [3, 12], "offset": 0}]
        _, wide = channel.infer_call("1:m.tflite", [np.zeros((1, 12), np.float64)])
        assert json.loads(wide[4:])["tensors"][0]["dtype"] == "<f8"
        assert json.loads(frame[4:]) == message == again
    finally:
        for arena in channel.arenas:
            arena.close(unlink=True)


def test_a_memo_parses_a_repeated_frame_once_and_stays_bounded(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    memo = workerwire.Memo()
    workerwire.send(a, {"ok": True, "n": 1})
    first = workerwire.recv(b, memo)
    workerwire.send(a, {"ok": True, "n": 1})
    assert workerwire.recv(b, memo) is first  # not parsed again
    workerwire.send(a, {"ok": True, "n": 2})
    assert workerwire.recv(b, memo) == {"ok": True, "n": 2}
    for n in range(3 * workerwire.Memo.LIMIT):
        memo.keep(str(n).encode(), {"n": n})
        memo.frame(n, lambda n=n: {"n": n})
    assert len(memo._messages) <= workerwire.Memo.LIMIT and len(memo._frames) <= workerwire.Memo.LIMIT
