"""The device worker: the process that owns a device's runtime and runs models on the daemon's command.

``python -m tenantd.workermain LISTEN_FD CONTROL_FD`` is started by the daemon
(:mod:`tenantd.worker`). Each of the daemon's calling threads (its slots, the threads that load)
connects to the listening socket once and keeps its connection; this process serves each
connection on a thread of its own, one frame and its reply at a time (:mod:`tenantd.workerwire`):
``hello``, ``runtimes``, ``load``, ``add_instance``, ``unload``, ``infer``, ``release``. Runtimes release the
GIL, so a model's instances run at once, as they did in the daemon. Runtime adapters are imported
by the target the daemon sends ("module:Class", from the daemon's registry, which so stays in one
place). Anything a runtime raises is a reply (``lost`` for a vanished device, else ``failure``);
what a runtime does that is not an exception (an abort, a segfault, an endless call) ends or stalls
this process, which is the point: the daemon notices, answers the requests in flight and starts
another. When the control socket ends (the daemon stopped or died) this process ends.

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
from pathlib import Path
from typing import Any, Dict, List, Optional

from tenantd import workerwire


class Worker:
    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        self._runtimes: Dict[str, Any] = {}
        self._models: Dict[str, Any] = {}
        self._arenas: Dict[str, workerwire.Arena] = {}
        self._lock = threading.Lock()
        # One permit per instance of each model: a call beyond them waits here for one to be free
        # (the daemon's scheduler never sends more; a caller that does is queued, not refused).
        self._gates: Dict[str, threading.Semaphore] = {}

    def serve(self) -> None:
        """One thread per connection: each of the daemon's calling threads has its own, so a
        call is a frame there and its reply back, with no hand-off between threads on either side."""
        while True:
            conn, _ = self._listener.accept()
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        memo = workerwire.Memo()  # this connection's repeating frames (an inference's call and reply)
        with conn:
            while True:
                try:
                    message = workerwire.recv(conn, memo)
                except (workerwire.PeerGone, OSError):
                    return  # that calling thread (or the daemon) is gone
                reply = self._handle(message, memo)
                try:
                    conn.sendall(reply)
                except OSError:
                    return

    def _handle(self, message: Dict[str, Any], memo: workerwire.Memo) -> bytes:
        """The reply frame to ``message`` (which is shared with later calls: only read it)."""
        reply: Dict[str, Any] = {"ok": True}
        try:
            if message["op"] == "infer":
                return self._infer(message, memo)
            reply.update(getattr(self, "op_" + str(message["op"]))(message))
        except MemoryError as exc:
            reply = {"ok": False, "kind": "failure", "message": f"out of memory: {exc}"}
        except Exception as exc:  # noqa: BLE001 - every frame gets a reply; the daemon types it
            names = {cls.__name__ for cls in type(exc).__mro__}
            text = str(exc) or type(exc).__name__
            reply = {"ok": False, "kind": "lost" if "DeviceLost" in names else "failure", "message": text}
            if "DeviceMemoryFull" in names:  # the device has no room for this model: not lost
                reply.update(kind="memory_full", networks_loaded=int(getattr(exc, "networks_loaded", 0)))
        return workerwire.frame(reply)

    def op_hello(self, message: Dict[str, Any]) -> Dict[str, Any]:
        models = {key: int(model.instances) for key, model in list(self._models.items())}
        return {"pid": os.getpid(), "python": sys.version.split()[0], "models": models}

    def _runtime(self, message: Dict[str, Any]) -> Any:
        name = message["runtime"]
        with self._lock:
            return self._runtimes.get(name) or self._new_runtime(name, message)

    def _new_runtime(self, name: str, message: Dict[str, Any]) -> Any:
        if name not in self._runtimes:
            module, _, cls_name = message["target"].partition(":")
            cls = getattr(importlib.import_module(module), cls_name)
            self._runtimes[name] = cls(
                device=message["device"], num_threads=message["num_threads"], slots=message["slots"]
            )
        return self._runtimes[name]

    def op_load(self, message: Dict[str, Any]) -> Dict[str, Any]:
        model = self._runtime(message).load(Path(message["path"]))
        self._gates[message["key"]] = threading.Semaphore(int(model.instances))
        self._models[message["key"]] = model
        return {
            "inputs": [spec.to_wire() for spec in model.inputs],
            "outputs": [spec.to_wire() for spec in model.outputs],
            "can_add_instances": bool(model.can_add_instances),
            "device_bytes": int(model.device_bytes),
            "facts": dict(model.facts),
            "max_batch": int(getattr(model, "max_batch", 1)),
        }

    def op_runtime(self, message: Dict[str, Any]) -> Dict[str, Any]:
        self._runtime(message)
        return {}

    def op_runtimes(self, message: Dict[str, Any]) -> Dict[str, Any]:
        """Which of the runtimes the daemon asks about this Python can run: each one's ``requires``
        checked as the registry checks them (its ``_present``: the package index and the library
        path, nothing imported), and for those asked to be inspected, its adapter imported: the
        version and the device kinds it runs on (an adapter that fails to import is not installed)."""
        registry = importlib.import_module("tenantd.runtimes")
        answers: Dict[str, Dict[str, Any]] = {}
        for name, asked in message["runtimes"].items():
            missing = [r for r in asked["requires"] if not registry._present(r)]
            answer: Dict[str, Any] = {"installed": not missing, "missing": missing}
            if not missing and asked.get("inspect"):
                module, _, cls_name = asked["target"].partition(":")
                try:
                    cls = getattr(importlib.import_module(module), cls_name)
                except ImportError as exc:
                    answer.update(installed=False, reason=f"{type(exc).__name__}: {exc}")
                else:
                    answer.update(version=str(cls.version()), device_kinds=list(cls.device_kinds))
            answers[name] = answer
        return {"python": sys.executable, "python_version": sys.version.split()[0], "runtimes": answers}

    def op_add_instance(self, message: Dict[str, Any]) -> Dict[str, Any]:
        model = self._models[message["key"]]
        model.add_instance()
        self._gates[message["key"]].release()
        return {"instances": int(model.instances)}

    def op_unload(self, message: Dict[str, Any]) -> Dict[str, Any]:
        model = self._models.pop(message["key"], None)
        self._gates.pop(message["key"], None)
        if model is not None:
            model.unload()
        return {}

    def op_release(self, message: Dict[str, Any]) -> Dict[str, Any]:
        runtime = self._runtimes.pop(message["runtime"], None)
        if runtime is not None:
            runtime.release()
        return {}

    def _arena(self, path: str, size: int) -> workerwire.Arena:
        with self._lock:
            arena = self._arenas.get(path)
            if arena is None:
                arena = self._arenas[path] = workerwire.Arena(path)
        arena.attach(size)
        return arena

    def _infer(self, message: Dict[str, Any], memo: workerwire.Memo) -> bytes:
        """``infer``: its reply frame is the same while the outputs' layout and the arena stay."""
        model, gate = self._models[message["key"]], self._gates[message["key"]]
        inputs = workerwire.get(self._arena(message["in"], message["in_size"]), message["tensors"], copy=False)
        with gate:
            outputs = model.infer(inputs)
        del inputs
        arena = self._arena(message["out"], message["out_size"])
        places = workerwire.put(arena, outputs)
        layout = tuple((array.dtype.str, array.shape) for array in outputs)
        return memo.frame((layout, arena.size), lambda: {"ok": True, "tensors": places, "out_size": arena.size})


def _limit_memory() -> None:
    """TENANTD_WORKER_MEMORY_LIMIT: this process's address space, so a runaway model fails here."""
    limit = os.environ.get("TENANTD_WORKER_MEMORY_LIMIT")
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))


def _exit_with_daemon(control: socket.socket) -> None:
    """The control socket stays open while the daemon lives (and wants this worker): at its end,
    end too, whatever threads are stuck in a runtime."""
    try:
        while control.recv(64):
            pass
    except OSError:
        pass
    os._exit(0)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m tenantd.workermain LISTEN_FD CONTROL_FD``: a listening socket the daemon's threads
    connect to, and a socket whose end means the daemon is gone."""
    args = sys.argv[1:] if argv is None else argv
    listener = socket.fromfd(int(args[0]), socket.AF_UNIX, socket.SOCK_STREAM)
    control = socket.fromfd(int(args[1]), socket.AF_UNIX, socket.SOCK_STREAM)
    os.close(int(args[0]))
    os.close(int(args[1]))
    _limit_memory()
    threading.Thread(target=_exit_with_daemon, args=(control,), daemon=True).start()
    Worker(listener).serve()
    return 0


if __name__ == "__main__":
    main()
