# SPDX-License-Identifier: GPL-3.0-or-later
"""Talks to a ``da3p worker`` process (JSON lines over its stdin/stdout; no bpy, no torch).

The worker runs in the user's own Python environment where ``da3-plugins`` is installed, so
Blender never imports torch; it stays alive between requests so the model loads once.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from typing import List, Optional


class WorkerError(RuntimeError):
    """The worker could not be started, crashed, or answered something unreadable."""


def find_executable(configured: str = "") -> Optional[str]:
    """The configured da3p (or python) path if it exists, else ``da3p`` on PATH."""
    if configured:
        path = os.path.expanduser(configured)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which("da3p")


def command_for(executable: str) -> List[str]:
    """A da3p executable runs ``da3p worker``; a Python interpreter runs ``-m da3_plugins.cli worker``."""
    name = os.path.basename(executable).lower()
    if name.startswith("python"):
        return [executable, "-m", "da3_plugins.cli", "worker"]
    return [executable, "worker"]


class WorkerClient:
    """One worker process; ``request`` sends, ``poll`` returns the events received so far."""

    def __init__(self, executable: str, device: str = "auto", idle_timeout: float = 900.0) -> None:
        if not executable or not os.path.isfile(executable):
            raise WorkerError(f"da3p not found ({executable or 'nothing configured, and none on PATH'}): "
                              "install da3-plugins in a Python environment and set its da3p in the add-on preferences")
        self.executable = executable
        cmd = command_for(executable) + ["--device", device, "--idle-timeout", str(idle_timeout)]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, bufsize=1)
        except OSError as exc:
            raise WorkerError(f"could not start {executable}: {exc}") from None
        self.events: "queue.Queue" = queue.Queue()
        self.stderr_tail: List[str] = []
        self.notes: List[str] = []  # info and warning lines the worker sent during runs
        self._next_id = 0
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
                if not isinstance(event, dict) or "event" not in event:
                    raise ValueError
            except ValueError:
                event = {"id": None, "event": "garbage", "message": line[:200]}
            self.events.put(event)
        self.events.put({"id": None, "event": "exit", "code": self.proc.wait()})

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-20:]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, cmd: str, **fields) -> int:
        if not self.alive:
            raise WorkerError(f"the worker has exited (code {self.proc.returncode}): {self.last_error_line()}")
        self._next_id += 1
        try:
            self.proc.stdin.write(json.dumps({"id": self._next_id, "cmd": cmd, **fields}) + "\n")
            self.proc.stdin.flush()
        except OSError:  # it died between the check and the write
            try:
                code = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            raise WorkerError(f"the worker has exited (code {code}): {self.last_error_line()}") from None
        return self._next_id

    def poll(self) -> list:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def wait(self, request_id: int, timeout: float = 600.0, on_progress=None) -> dict:
        """Block until the request ends; returns its final event ("done" or "error").

        Raises WorkerError when the worker exits, or prints something that is not protocol.
        """
        while True:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                raise WorkerError(f"no answer from the worker in {timeout:.0f} s") from None
            final = self.interpret(event, request_id, on_progress)
            if final is not None:
                return final

    def interpret(self, event: dict, request_id: int, on_progress=None) -> Optional[dict]:
        kind = event.get("event")
        if kind == "garbage":
            self.stop()
            raise WorkerError(f"the worker printed something unexpected: {event['message']}")
        if kind == "exit":
            raise WorkerError(f"the worker exited (code {event['code']}): {self.last_error_line()}")
        if event.get("id") != request_id:
            return None
        if kind == "progress":
            if on_progress is not None:
                on_progress(event)
            return None
        if kind in ("info", "warning"):  # news during a run (e.g. a skipped photo), not its end
            self.notes.append(f"{kind}: {event.get('message', '')}")
            return None
        return event

    def last_error_line(self) -> str:
        if self.proc.poll() is not None:
            self._stderr_thread.join(timeout=2)  # let the reader drain what the process wrote
        lines = [x for x in self.stderr_tail if x.strip()]
        return lines[-1] if lines else "no message"

    def stop(self) -> None:
        """Terminate the worker (frees its memory)."""
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class ProgressClock:
    """Status-bar text with an ETA from a worker's progress events.

    Each stage (``load``, ``preprocess``, ``predict`` ...) is timed from its first event; the
    ETA of a stage is its elapsed time times (total - done) / done, so it needs one finished
    step.  ``now`` is injectable for tests."""

    def __init__(self) -> None:
        self.stage: Optional[str] = None
        self.start = 0.0

    def text(self, event: dict, now: float) -> str:
        stage = str(event.get("stage", ""))
        total = max(1, int(event.get("total", 1) or 1))
        done = min(total, max(0, int(event.get("done", 0) or 0)))
        if stage != self.stage:
            self.stage, self.start = stage, now
        eta = ""
        if 0 < done < total and now > self.start:
            eta = f", ETA {format_seconds((now - self.start) * (total - done) / done)}"
        message = str(event.get("message", "") or "")
        return f"DA3 {stage}: {done}/{total}{eta}" + (f"  {message}" if message else "") + "  (Esc to cancel)"


def format_seconds(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) of a duration."""
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
