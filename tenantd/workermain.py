"""The device worker: the process that owns a device's runtime and runs models on the daemon's command.

``python -m tenantd.workermain FD`` is started by the daemon (:mod:`tenantd.worker`) with one end of
a socket pair as FD. It loads runtime adapters by the target the daemon sends ("module:Class", from
the daemon's runtime registry, so the registry stays in one place) and answers frames
(:mod:`tenantd.workerwire`): ``load``, ``add_instance``, ``unload``, ``infer``, ``release``,
``exit``. Each frame runs on a thread of a small pool (runtimes release the GIL, so a model's
instances run at once, as they did in the daemon), and every frame gets exactly one reply with its
id. Anything a runtime raises is a reply (``lost`` for a vanished device, else ``failure``); what
a runtime does that is not an exception (an abort, a segfault, an endless call) ends or stalls this
process, which is the point: the daemon notices, answers the requests in flight and starts another.

Written at the Python 3.6 language level, standard library and numpy only (checked by vermin in
``tests/unit/test_worker_language.py``): a device's worker may run under that device's own Python.
"""

# ruff: noqa: UP006, UP035, UP045 - typing.Dict/List/Optional: this module runs on Python 3.6

import importlib
import os
import resource
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

from tenantd import workerwire


class Worker:
    def __init__(self, sock: socket.socket, threads: int) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads)
        self._runtimes: Dict[str, Any] = {}
        self._models: Dict[str, Any] = {}
        self._arenas: Dict[str, workerwire.Arena] = {}
        self._arena_lock = threading.Lock()

    def serve(self) -> None:
        while True:
            try:
                message = workerwire.recv(self._sock)
            except (workerwire.PeerGone, OSError):
                return  # the daemon is gone or closed us: nothing left to serve
            if message.get("op") == "exit":
                self._reply({"id": message.get("id"), "ok": True})
                return
            self._pool.submit(self._handle, message)

    def _reply(self, message: Dict[str, Any]) -> None:
        with self._send_lock:
            workerwire.send(self._sock, message)

    def _handle(self, message: Dict[str, Any]) -> None:
        try:
            result = getattr(self, "op_" + str(message["op"]))(message)
            reply = {"id": message["id"], "ok": True}
            reply.update(result)
        except MemoryError as exc:
            reply = {
                "id": message.get("id"),
                "ok": False,
                "kind": "failure",
                "message": f"out of memory: {exc}",
            }
        except Exception as exc:  # noqa: BLE001 - every frame gets a reply; the daemon types it
            lost = any(cls.__name__ == "DeviceLost" for cls in type(exc).__mro__)
            text = str(exc) or type(exc).__name__
            reply = {"id": message.get("id"), "ok": False, "kind": "lost" if lost else "failure", "message": text}
        try:
            self._reply(reply)
        except OSError:
            pass  # the daemon went away; serve() ends on its next read

    def _runtime(self, message: Dict[str, Any]) -> Any:
        name = message["runtime"]
        if name not in self._runtimes:
            module, _, cls_name = message["target"].partition(":")
            cls = getattr(importlib.import_module(module), cls_name)
            self._runtimes[name] = cls(
                device=message["device"], num_threads=message["num_threads"], slots=message["slots"]
            )
        return self._runtimes[name]

    def op_load(self, message: Dict[str, Any]) -> Dict[str, Any]:
        model = self._runtime(message).load(Path(message["path"]))
        self._models[message["key"]] = model
        return {
            "inputs": [spec.to_wire() for spec in model.inputs],
            "outputs": [spec.to_wire() for spec in model.outputs],
            "can_add_instances": bool(model.can_add_instances),
            "device_bytes": int(model.device_bytes),
            "facts": dict(model.facts),
        }

    def op_add_instance(self, message: Dict[str, Any]) -> Dict[str, Any]:
        model = self._models[message["key"]]
        model.add_instance()
        return {"instances": int(model.instances)}

    def op_unload(self, message: Dict[str, Any]) -> Dict[str, Any]:
        model = self._models.pop(message["key"], None)
        if model is not None:
            model.unload()
        return {}

    def op_release(self, message: Dict[str, Any]) -> Dict[str, Any]:
        runtime = self._runtimes.pop(message["runtime"], None)
        if runtime is not None:
            runtime.release()
        return {}

    def _arena(self, path: str, size: int) -> workerwire.Arena:
        with self._arena_lock:
            arena = self._arenas.get(path)
            if arena is None:
                arena = self._arenas[path] = workerwire.Arena(path)
        arena.attach(size)
        return arena

    def op_infer(self, message: Dict[str, Any]) -> Dict[str, Any]:
        model = self._models[message["key"]]
        inputs = workerwire.get(self._arena(message["in"], message["in_size"]), message["tensors"], copy=False)
        outputs = model.infer(inputs)
        del inputs
        arena = self._arena(message["out"], message["out_size"])
        places = workerwire.put(arena, outputs)
        return {"tensors": places, "out_size": arena.size}


def _limit_memory() -> None:
    """TENANTD_WORKER_MEMORY_LIMIT: this process's address space, so a runaway model fails here."""
    limit = os.environ.get("TENANTD_WORKER_MEMORY_LIMIT")
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fd = int(args[0])
    threads = int(args[1]) if len(args) > 1 else 4
    sock = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM)
    os.close(fd)
    _limit_memory()
    workerwire.send(sock, {"id": 0, "ok": True, "pid": os.getpid(), "python": sys.version.split()[0]})
    Worker(sock, threads).serve()
    # Without waiting for threads stuck in a runtime: the daemon has stopped listening.
    os._exit(0)


if __name__ == "__main__":
    main()
