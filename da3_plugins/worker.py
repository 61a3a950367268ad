"""``da3p worker``: a long-lived process that keeps models loaded between requests.

Protocol: JSON lines on stdin and stdout, no sockets.  Each request is one object with an
``id`` and a ``cmd``; every reply line carries the request's ``id`` and an ``event``:

    {"id": 1, "cmd": "ping"}                      -> {"id": 1, "event": "pong", "version": "..."}
    {"id": 2, "cmd": "reconstruct", "inputs": ["photos/"], "output": "out/",
     "model": "DIR_OR_ID", "export": "scene", "options": {"process_res": 504, ...}}
        -> {"id": 2, "event": "progress", "stage": "infer", "done": 3, "total": 8, "message": "..."} ...
        -> {"id": 2, "event": "done", "output": "out/", "files": {"scene": "out/scene.npz"}}
        or {"id": 2, "event": "error", "code": 2, "message": "one line"}
    {"id": 3, "cmd": "unload"}                    -> frees the loaded models
    {"id": 4, "cmd": "shutdown"}                  -> exits

A reconstruct request is a :class:`~da3_plugins.runner.RunRequest`: ``options`` holds
:class:`~da3_plugins.core.options.ReconstructOptions` fields by name (an unknown one is an
error naming it; ``fps`` there is read too), plus optional ``poses``, ``intrinsics`` (files),
``conf_threshold`` and ``overwrite``.  It runs through :func:`~da3_plugins.runner.run_reconstruct`,
exactly as ``da3p reconstruct`` does.

The worker exits by itself after ``--idle-timeout`` seconds without a request (default 900),
and when its stdin closes (the parent went away).  Anything it prints that is not protocol goes
to stderr.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import sys
import time
from typing import Dict, Optional, TextIO

from da3_plugins.core.errors import UserInputError, first_line
from da3_plugins.runner import DEFAULT_MODEL, JsonProgress, Progress, RunRequest, load_model_for, run_reconstruct


class Worker:
    """Serves requests from ``inp`` to ``out``; models stay loaded between requests."""

    def __init__(self, inp: TextIO, out: TextIO, device: str = "auto", idle_timeout: float = 900.0) -> None:
        self.inp, self.out = inp, out
        self.device, self.idle_timeout = device, idle_timeout
        self.models: Dict[str, object] = {}

    def _model(self, source: Optional[str], precision: Optional[str], progress: Progress):
        """The model for ``source``, loaded once (one model in memory at a time) at ``auto``
        precision; a request's own precision is applied per run by the pipeline (no reload), so
        a request without one runs at ``auto`` whatever came before."""
        key = source or DEFAULT_MODEL
        if key not in self.models:
            self.models.clear()
            self.models[key] = load_model_for(source, device=self.device, precision="auto", progress=progress,
                                              flag="model")
        return self.models[key]

    def handle(self, req: dict) -> bool:
        """Serve one request; False when the worker should stop."""
        reply = JsonProgress(self.out, id=req.get("id"))
        cmd = req.get("cmd")
        if cmd == "ping":
            from da3_plugins import __version__

            reply.event("pong", version=__version__, loaded=list(self.models))
        elif cmd == "shutdown":
            reply.event("bye")
            return False
        elif cmd == "unload":
            self.models.clear()
            reply.event("unloaded")
        elif cmd == "reconstruct":
            self._reconstruct(req, reply)
        else:
            reply.event("error", code=2, message=f"unknown cmd {cmd!r} (ping, reconstruct, unload, shutdown)")
        return True

    def _reconstruct(self, req: dict, reply: JsonProgress) -> None:
        try:
            request = RunRequest.from_message(req)
            result = run_reconstruct(request, lambda src, prec: self._model(src, prec, reply), reply)
            reply.event("done", output=str(result.folder), files=result.absolute_files(), views=result.views,
                        size=list(result.size))
        except UserInputError as exc:
            reply.event("error", code=2, message=first_line(exc))
        except Exception as exc:  # internal: say what, keep serving
            reply.event("error", code=1, message=f"{type(exc).__name__}: {first_line(exc)}")

    def serve(self) -> int:
        last = time.monotonic()
        while True:
            if self.idle_timeout and hasattr(self.inp, "fileno"):
                remaining = self.idle_timeout - (time.monotonic() - last)
                if remaining <= 0:
                    return 0
                ready, _, _ = select.select([self.inp], [], [], remaining)
                if not ready:
                    return 0
            line = self.inp.readline()
            if not line:
                return 0  # stdin closed: the parent is gone
            last = time.monotonic()
            line = line.strip()
            if not line:
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                JsonProgress(self.out, id=None).event("error", code=2, message=f"bad request line ({exc}): {line[:80]}")
                continue
            if not self.handle(req):
                return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="da3p worker", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--idle-timeout", type=float, default=900.0, help="exit after this many idle seconds (0: never)")
    args = p.parse_args(argv)
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    # terminate (the client's cancel) unwinds normally, so partial outputs are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return Worker(sys.stdin, out, args.device, args.idle_timeout).serve()
