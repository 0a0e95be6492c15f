"""The worker's frames on a real socket pair: one recv takes a whole small frame, and frames that
arrive in pieces (a large one, or a length split across reads) are still read whole."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

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
