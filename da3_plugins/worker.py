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


class _Emitter:
    def __init__(self, stream: TextIO, request_id) -> None:
        self.stream, self.id = stream, request_id

    def __call__(self, event: str, **fields) -> None:
        self.stream.write(json.dumps({"id": self.id, "event": event, **fields}) + "\n")
        self.stream.flush()


class Worker:
    """Serves requests from ``inp`` to ``out``; models stay loaded between requests."""

    def __init__(self, inp: TextIO, out: TextIO, device: str = "auto", idle_timeout: float = 900.0) -> None:
        self.inp, self.out = inp, out
        self.device, self.idle_timeout = device, idle_timeout
        self.models: Dict[tuple, object] = {}

    def _model(self, source: str, dtype: Optional[str]):
        key = (source, self.device, dtype)
        if key not in self.models:
            from da3_plugins.core import load_model

            self.models.clear()  # one model in memory at a time
            self.models[key] = load_model(source, device=self.device, dtype=dtype)
        return self.models[key]

    def handle(self, req: dict) -> bool:
        """Serve one request; False when the worker should stop."""
        emit = _Emitter(self.out, req.get("id"))
        cmd = req.get("cmd")
        if cmd == "ping":
            from da3_plugins import __version__

            emit("pong", version=__version__, loaded=[k[0] for k in self.models])
        elif cmd == "shutdown":
            emit("bye")
            return False
        elif cmd == "unload":
            self.models.clear()
            emit("unloaded")
        elif cmd == "reconstruct":
            self._reconstruct(req, emit)
        else:
            emit("error", code=2, message=f"unknown cmd {cmd!r} (ping, reconstruct, unload, shutdown)")
        return True

    def _reconstruct(self, req: dict, emit) -> None:
        from da3_plugins.cli import OutputDir, Progress, UsageError, _parse_exports
        from da3_plugins.core.images import ImageInputError, load_images

        progress = Progress("none")
        progress.update = lambda stage, done, total, message="": emit(  # type: ignore[method-assign]
            "progress", stage=stage, done=done, total=total, message=message)
        try:
            inputs, output = req.get("inputs"), req.get("output")
            if not inputs or not output:
                raise UsageError("request: 'inputs' and 'output' are required")
            formats = _parse_exports(req.get("export", "scene"))
            options = dict(req.get("options") or {})
            out_dir = OutputDir(output, bool(req.get("overwrite", True)))
            try:
                images = load_images(inputs, fps=options.pop("fps", 2.0))
                model_src = req.get("model") or "depth-anything/DA3NESTED-GIANT-LARGE-1.1"
                progress.update("model", 0, 1, model_src)
                try:
                    model = self._model(model_src, req.get("dtype"))
                except (FileNotFoundError, RuntimeError, ImportError, ValueError) as exc:
                    raise UsageError(f"model {model_src}: {exc}") from None
                progress.update("model", 1, 1, model.preset)
                rec = model.reconstruct(images, progress=progress, **options)
            except BaseException:
                out_dir.discard()
                raise
            final, written = out_dir.write(rec, formats, req.get("conf_threshold", "auto"), progress)
            emit("done", output=str(final), files={k: str(final / v) for k, v in written.items()},
                 views=len(rec), size=[rec.width, rec.height])
        except (UsageError, ImageInputError, ValueError, TypeError) as exc:
            emit("error", code=2, message=str(exc).splitlines()[0])
        except Exception as exc:  # internal: say what, keep serving
            emit("error", code=1, message=f"{type(exc).__name__}: {exc}")

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
                _Emitter(self.out, None)("error", code=2, message=f"bad request line ({exc}): {line[:80]}")
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
