"""Ray: many scenes (``da3p batch --ray``) and the passes of one long input (``da3p reconstruct
--ray``) on workers that each load the model once and keep it.

Ray is an optional dependency (``pip install "da3-plugins[ray]"``): this is the only module that
imports it, and only when a Ray run starts.

* :func:`ray_session` joins a cluster (an address, or ``RAY_ADDRESS``) or starts a local
  instance that listens on 127.0.0.1 only and is shut down again at the end.
* :class:`WorkerSpec` says how many workers and what each holds (CPUs, a GPU fraction).
* :class:`RayChunkPool` answers network passes in order
  (:class:`~da3_plugins.core.predictor.ChunkPool`); the driver keeps the joining, loop closure
  and pose graph, so the result equals the serial run.
* :func:`run_scenes` runs scene jobs (``da3p batch``) on scene workers.

A worker that dies (killed, out of memory) is restarted and its scene or pass is retried
(:attr:`WorkerSpec.retries` times); a scene that still fails is reported and the others go on.
Outputs are written by the workers, so on a cluster ``-o`` must be a folder every node sees
(a shared file system).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from da3_plugins.core.errors import UserInputError
from da3_plugins.runner import ModelCache, ModelLoader

__all__ = ["ModelLoader", "RayChunkPool", "WorkerSpec", "check_address", "ray_session", "run_scenes"]

_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.\-\[\]:]+:\d+)$")


def check_address(address: Optional[str]) -> Optional[str]:
    """``--ray`` without a value (None), ``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT``;
    anything else (a photo folder caught by the optional value, say) is a one-line error."""
    if address is None or _ADDRESS.match(address):
        return address
    raise UserInputError(f"--ray {address}: not a Ray address (HOST:PORT, ray://HOST:PORT or auto); "
                         "put --ray after the inputs, or write --ray=ADDRESS")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserInputError('--ray: Ray is not installed (pip install "da3-plugins[ray]")') from None
    return ray


@contextlib.contextmanager
def ray_session(address: Optional[str] = None, *, num_cpus: Optional[int] = None,
                num_gpus: Optional[int] = None, info: Callable[[str], None] = lambda text: None):
    """Ray for the duration of a block.

    address: None: ``RAY_ADDRESS`` when set, else a new local instance (``num_cpus``,
        ``num_gpus``: its resources; default all of this machine's) that listens on loopback
        only and is shut down after the block; ``"local"``: always a new local instance;
        ``"auto"`` or ``HOST:PORT`` / ``ray://HOST:PORT``: join that cluster (left running)."""
    check_address(address)
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or "local"
    local = address == "local"
    if local:
        # Ray's single-machine mode: every server binds 127.0.0.1 (read when ray is imported,
        # and inherited by the processes it starts)
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ.pop("RAY_ADDRESS", None)
    ray = _import_ray()
    if ray.is_initialized():  # a caller's own session (a notebook, a test): use it, leave it
        yield ray
        return
    kwargs: Dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if local:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, **kwargs)
            info(f"Ray: started a local instance ({int(ray.cluster_resources().get('CPU', 0))} CPUs, "
                 f"{int(ray.cluster_resources().get('GPU', 0))} GPUs) on 127.0.0.1")
        else:
            ray.init(address=address, **kwargs)
            res = ray.cluster_resources()
            info(f"Ray: joined {address} ({len(ray.nodes())} node(s), {int(res.get('CPU', 0))} CPUs, "
                 f"{int(res.get('GPU', 0))} GPUs)")
    except ConnectionError as exc:
        raise UserInputError(f"--ray {address}: cannot connect ({str(exc).splitlines()[0]})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class WorkerSpec:
    """How many Ray workers and what each holds.

    workers: how many (None: as many as the cluster's resources allow, at least 1).
    cpus: CPUs per worker (torch uses that many threads).
    gpus: GPUs per worker; a fraction shares one GPU (0.5: two workers a GPU); 0 on CPU clusters.
    retries: how often a worker that died is restarted and its task retried.
    """

    workers: Optional[int] = None
    cpus: float = 1.0
    gpus: float = 0.0
    retries: int = 2

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise UserInputError(f"--workers: expected at least 1, got {self.workers}")
        if not self.cpus > 0:
            raise UserInputError(f"--cpus-per-worker: expected a positive number, got {self.cpus}")
        if self.gpus < 0:
            raise UserInputError(f"--gpus-per-worker: expected 0 or more, got {self.gpus}")
        if self.retries < 0:
            raise UserInputError(f"retries: expected 0 or more, got {self.retries}")

    def count(self, ray) -> int:
        """The number of workers to start on the connected cluster."""
        if self.workers is not None:
            return self.workers
        res = ray.cluster_resources()
        by_cpu = int(res.get("CPU", 1) // self.cpus)
        if self.gpus > 0:
            return max(1, min(by_cpu, int(res.get("GPU", 0) // self.gpus)))
        return max(1, by_cpu)

    def options(self) -> Dict[str, Any]:
        return dict(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=self.retries,
                    max_task_retries=self.retries)


def _threads(cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(cpus)))


class _ChunkWorker:
    """A Ray actor: one model, network passes."""

    def __init__(self, loader: Callable, source, precision, cpus: float) -> None:
        _threads(cpus)
        self.model = loader(source, precision)

    def predict(self, chunk):
        from da3_plugins.core.model.predictor import DA3Predictor

        return DA3Predictor(self.model).predict(chunk)

    def pid(self) -> int:
        return os.getpid()


class _SceneWorker:
    """A Ray actor: whole scenes (:func:`da3_plugins.batch.run_scene`), models kept between them."""

    def __init__(self, loader: Callable, settings, cpus: float) -> None:
        _threads(cpus)
        self.models = ModelCache(loader)
        self.settings = settings

    def run(self, task: Callable, job):
        from da3_plugins.runner import Progress

        return task(job, self.settings, self.models, Progress())

    def pid(self) -> int:
        return os.getpid()


class RayChunkPool:
    """Workers holding the same model, answering network passes in order
    (:class:`~da3_plugins.core.predictor.ChunkPool`).  Use inside :func:`ray_session`."""

    def __init__(self, source: Optional[str], precision: Optional[str], spec: WorkerSpec = WorkerSpec(), *,
                 loader: Optional[Callable] = None) -> None:
        ray = _import_ray()
        self.ray = ray
        actor = ray.remote(_ChunkWorker).options(**spec.options())
        self.actors = [actor.remote(loader or ModelLoader(), source, precision, spec.cpus)
                       for _ in range(spec.count(ray))]
        self.workers = len(self.actors)
        try:
            ray.get([a.pid.remote() for a in self.actors])  # every model loaded (a bad one fails here)
        except ray.exceptions.RayActorError as exc:
            self.close()
            raise RuntimeError(f"the Ray workers could not load the model {source or 'default'}: "
                               f"{(str(exc).strip().splitlines() or [''])[-1]}") from None

    def predict_many(self, chunks: Iterable) -> Iterator:
        ray = self.ray
        source = iter(chunks)
        idle = deque(self.actors)
        running: Dict[Any, tuple] = {}
        done: Dict[int, Any] = {}
        submitted = yielded = 0
        exhausted = False
        while True:
            while idle and not exhausted and len(running) + len(done) < 2 * self.workers:
                try:
                    chunk = next(source)
                except StopIteration:
                    exhausted = True
                    break
                actor = idle.popleft()
                running[actor.predict.remote(chunk)] = (submitted, actor)
                submitted += 1
            if yielded in done:
                yield done.pop(yielded)
                yielded += 1
                continue
            if not running:
                return
            ready, _ = ray.wait(list(running), num_returns=1)
            index, actor = running.pop(ready[0])
            idle.append(actor)
            done[index] = _get(ray, ready[0])

    def close(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(a)
        self.actors = []


def _get(ray, ref):
    """``ray.get`` with a worker's own exception re-raised as itself (a UserInputError stays one)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def run_scenes(jobs, settings, spec: WorkerSpec, emit: Callable, *, task: Callable, failure: Callable,
               loader: Optional[Callable] = None, info: Callable[[str], None] = lambda text: None) -> None:
    """Run scene jobs on Ray scene workers: ``task(job, settings, get_model, progress) -> record``
    there, ``emit(record)`` here as each finishes (any order).

    A worker that dies is restarted and its scene retried (``spec.retries``); a scene whose
    worker died every time is ``failure(job, message, code=1)``, and a new worker takes its
    place."""
    ray = _import_ray()
    actor = ray.remote(_SceneWorker).options(**spec.options())
    make = lambda: actor.remote(loader or ModelLoader(), settings, spec.cpus)  # noqa: E731
    count = max(1, min(spec.count(ray), len(jobs)))
    idle = deque(make() for _ in range(count))
    info(f"Ray: {count} scene worker(s), {spec.cpus:g} CPU(s)" + (f" and {spec.gpus:g} GPU each" if spec.gpus else " each"))
    queue = deque(jobs)
    running: Dict[Any, tuple] = {}
    try:
        while queue or running:
            while queue and idle:
                a, job = idle.popleft(), queue.popleft()
                running[a.run.remote(task, job)] = (a, job)
            ready, _ = ray.wait(list(running), num_returns=1)
            a, job = running.pop(ready[0])
            try:
                record = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                record = failure(job, f"the Ray worker died {spec.retries + 1} time(s) "
                                                  f"({type(exc).__name__}); a new one takes its place", code=1)
                with contextlib.suppress(Exception):
                    ray.kill(a)
                a = make()
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None) or exc
                record = failure(job, f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}", code=1)
            idle.append(a)
            emit(record)
    finally:
        for a in list(idle) + [v[0] for v in running.values()]:
            with contextlib.suppress(Exception):
                ray.kill(a)
