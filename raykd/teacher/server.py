"""``teacher.mode: server`` (the Ray shell only): the TeacherServer, a Ray actor that loads frozen models once and
serves batched logits to many students, and ``ServedTeacher``, a student's side of it.

Continuous batching: a request that finds the server idle starts a forward at once (after ``batch_wait_ms`` for
more rows, 0 by default); requests that arrive while a forward runs on its worker thread (the actor keeps accepting
them) are merged into the next one, up to ``max_batch_rows`` rows. Tensors travel as ``Carried``: numpy views that
Ray writes once, out of band, where its pickling of a torch tensor copies the whole storage several times. The
actor is created with Ray's ``max_restarts`` and ``max_task_retries``: after a crash it reloads its checkpoints and
Ray re-sends the requests that were in flight, so every request gets exactly one answer and none is lost (inference
is pure).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from torch import Tensor

from raykd.cluster import ANSWER_TIMEOUT_S, START_TIMEOUT_S, get_within
from raykd.config import ExperimentConfig, ModelSpec, TeacherConfig
from raykd.engine import Batch, predict
from raykd.files import file_digest
from raykd.models import build_model
from raykd.nodes import Setup, node_path
from raykd.precision import serving_precision
from raykd.teacher.cache import Fill, dense_logits, tail_logsumexp
from raykd.teacher.protocol import FrozenLogits, TeacherLogits
from raykd.teacher.replicas import ServerPool, Spread, replica_name
from raykd.teacher.source import LoadNode


@dataclass(frozen=True)
class ServedModel:
    """What the server needs to rebuild one frozen model: its key, checkpoint and architecture."""

    key: str
    checkpoint: str
    spec: dict[str, Any]
    input_shape: tuple[int, ...]
    num_classes: int
    tokens: bool = False  # a language model: token ids in, (rows, seq_len, vocab) logits out
    pixels: dict[str, Any] | None = None  # uint8 pixels in, standardised by the model (``Dataset.pixels``)


#: A reply: (logits,) of shape (models, rows, ...), or with ``teacher.top_k`` (values, ids) of the K largest, and
#: with ``teacher.top_k_fill: mass`` also each row's dropped logits' logsumexp (float32): (values, ids, tail).
Answer = tuple[Tensor, ...]


class Carried:
    """A tensor as Ray should carry it. Ray pickles a torch tensor by ``torch.save`` of its whole storage, a slice's
    base included (a 256-row reply sliced from a 2,048-row answer weighed 82 kB, not 10 kB), through several copies;
    a numpy view is written once, out of band, with only its own bytes. ``as_dtype``: what the receiver gets back
    (``narrowed`` integer inputs are widened again); ``rows_first``: a (rows, models, ...) slice, so one request's
    rows are contiguous, received as the (models, rows, ...) view."""

    def __init__(self, t: Tensor, as_dtype: torch.dtype | None = None, rows_first: bool = False) -> None:
        self.t, self.as_dtype, self.rows_first = t, as_dtype or t.dtype, rows_first

    def __reduce__(self) -> tuple[Callable[..., Tensor], tuple[Any, ...]]:
        sent = self.t.view(torch.int16) if self.t.dtype == torch.bfloat16 else self.t  # numpy has no bfloat16
        return _arrived, (sent.numpy(), self.t.dtype, self.as_dtype, self.rows_first)


def _arrived(array: np.ndarray, dtype: torch.dtype, as_dtype: torch.dtype, rows_first: bool) -> Tensor:
    """A ``Carried`` tensor over Ray's buffer, uncopied. Ray's buffers are read-only: the server only reads its
    inputs (merging them copies), and ``ServedTeacher`` copies a reply once, into its own float32 rows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        t = torch.from_numpy(array).view(dtype).to(as_dtype)
    return t.transpose(0, 1) if rows_first else t


def narrowed(x: Tensor) -> Tensor:
    """Integer inputs (token ids) in the smallest integer dtype that holds them, for the trip to the server, which
    widens them back (``Carried.as_dtype``): its models see what an inline teacher sees. Pixels travel as the uint8
    they are stored in (``Dataset.pixels``: the models standardise them), floats as they are."""
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool or x.numel() == 0:
        return x
    low, high = int(x.min()), int(x.max())
    fits = [
        d for d in (torch.uint8, torch.int16, torch.int32) if torch.iinfo(d).min <= low and high <= torch.iinfo(d).max
    ]
    return x.to(fits[0]) if fits else x


@dataclass
class _Request:
    keys: tuple[str, ...]
    x: Tensor
    done: asyncio.Future
    arrived: float


class TeacherServer:
    """Serves ``infer(keys, x) -> logits[len(keys), rows, classes]`` for the models it holds."""

    def __init__(
        self,
        models: list[ServedModel],
        device: str,
        dtype: str,
        max_batch_rows: int,
        wait_ms: float,
        top_k: int | None = None,
        top_k_fill: Fill = "min",
    ) -> None:
        self.device = torch.device(device)
        self.dtype, self.top_k, self.top_k_fill = getattr(torch, dtype), top_k, top_k_fill
        self.max_batch_rows, self.wait_s = max_batch_rows, wait_ms / 1000
        self.models: dict[str, torch.nn.Module] = {}
        for m in models:
            model = build_model(ModelSpec(**m.spec), m.input_shape, m.num_classes, tokens=m.tokens, pixels=m.pixels)
            model.load_state_dict(torch.load(m.checkpoint, weights_only=True, map_location="cpu")["state_dict"])
            self.models[m.key] = model.eval().requires_grad_(False).to(self.device)
        self.mixed = serving_precision(self.dtype, self.device)
        self.mixed.layout(list(self.models.values()))
        self.queue: deque[_Request] = deque()
        self.arrived = asyncio.Event()
        self.batcher: asyncio.Task[None] | None = None
        self.counters = {"requests": 0, "rows": 0, "batches": 0, "max_batch_rows": 0, "wait_s": 0.0, "compute_s": 0.0}

    async def infer(self, keys: tuple[str, ...], x: Tensor) -> tuple[Carried, ...]:
        """The models' ``Answer`` on ``x``; it reaches the caller through Ray as tensors."""
        loop = asyncio.get_running_loop()
        if self.batcher is None:  # the event loop exists only once a request arrives
            self.batcher = loop.create_task(self._batch_forever())
        done = loop.create_future()
        self.queue.append(_Request(tuple(keys), x, done, time.perf_counter()))
        self.arrived.set()
        return await done

    async def _batch_forever(self) -> None:
        """Continuous batching: the next forward starts as soon as the last one ends, with what queued meanwhile."""
        while True:
            await self._idle()
            while self.queue:
                await self._answer(self._take())

    async def _idle(self) -> None:
        """An idle server's wait: for a request, then up to ``batch_wait_ms`` for more rows (0: none), so a lone
        request pays no wait unless the configuration trades its latency for fuller batches."""
        if not self.queue:
            self.arrived.clear()
            await self.arrived.wait()
        deadline = time.perf_counter() + self.wait_s
        while sum(len(r.x) for r in self.queue) < self.max_batch_rows and (left := deadline - time.perf_counter()) > 0:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)

    def _take(self) -> list[_Request]:
        """The queued requests, oldest first, up to ``max_batch_rows`` rows (at least one request)."""
        group = [self.queue.popleft()]
        rows = len(group[0].x)
        while self.queue and rows + len(self.queue[0].x) <= self.max_batch_rows:
            group.append(self.queue.popleft())
            rows += len(group[-1].x)
        return group

    async def _answer(self, group: list[_Request]) -> None:
        """One forward per distinct model set over the merged rows; each caller gets its own rows' slice (a view:
        ``Carried`` sends only its bytes, so no copy is made for it)."""
        started = time.perf_counter()
        by_keys: dict[tuple[str, ...], list[_Request]] = {}
        for request in group:
            by_keys.setdefault(request.keys, []).append(request)
        for keys, requests in by_keys.items():
            try:
                answer = await asyncio.to_thread(self._forward, keys, [r.x for r in requests])
            except Exception as err:  # noqa: BLE001 - a bad request fails its callers, not the server
                for r in requests:
                    r.done.set_exception(err)
                continue
            offset = 0
            for r in requests:
                r.done.set_result(tuple(Carried(part[offset : offset + len(r.x)], rows_first=True) for part in answer))
                offset += len(r.x)
        rows = sum(len(r.x) for r in group)
        c = self.counters
        c["requests"] += len(group)
        c["rows"] += rows
        c["batches"] += 1
        c["max_batch_rows"] = max(c["max_batch_rows"], rows)
        c["wait_s"] += sum(started - r.arrived for r in group)
        c["compute_s"] += time.perf_counter() - started

    @torch.no_grad()
    def _forward(self, keys: tuple[str, ...], xs: list[Tensor]) -> Answer:
        """The ``Answer`` on the merged ``xs``, rows first: (rows, models, ...), so a caller's rows are contiguous.
        With ``top_k``, (values, ids) of each row's K largest, taken on the server's device so only they travel (a
        language model's vocabulary would not); with the ``mass`` fill also each row's ``tail_logsumexp``, which
        only this side, holding the whole row, can take."""
        x = self.mixed.inputs(torch.cat(xs).to(self.device, non_blocking=True))
        with self.mixed.autocast():
            logits = torch.stack([self.models[k](x) for k in keys], dim=1)
        if self.top_k is None:
            return (logits.to(self.dtype).cpu(),)
        values, ids = logits.float().topk(self.top_k, dim=-1)
        answer = values.to(self.dtype).cpu(), ids.to(torch.int32).cpu()
        return (*answer, tail_logsumexp(logits, ids).cpu()) if self.top_k_fill == "mass" else answer

    def stats(self) -> dict[str, float | str]:
        """Requests served, merged batches and their sizes, time spent waiting versus computing, and where the
        server runs (its device and Ray node)."""
        c: dict[str, float | str] = dict(self.counters)
        c["mean_batch_rows"] = self.counters["rows"] / max(self.counters["batches"], 1)
        c["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        c["device"] = str(self.device)
        c["node_id"] = ray.get_runtime_context().get_node_id()
        return c


def start_server(
    models: list[ServedModel], cfg: TeacherConfig, name: str | None = None, namespace: str | None = None
) -> ServerPool:
    """Create ``teacher.replicas`` server actors, each with its resources and restart policy and (optionally) a name
    derived from ``name`` (``replica_name``), in ``namespace``, to look them up by (processes of another namespace,
    such as Flower's client actors, find them by both); return once all of them answer."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and cfg.num_gpus > 0 and torch.cuda.is_available())
    options = {
        "namespace": namespace,
        "num_cpus": cfg.num_cpus,
        "num_gpus": cfg.num_gpus,
        "max_restarts": cfg.max_restarts,
        "max_task_retries": cfg.max_restarts,
        "max_concurrency": 1000,
        "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(max(1, int(cfg.num_cpus)))}},
    }
    args = ("cuda" if use_cuda else "cpu", cfg.dtype, cfg.max_batch_rows, cfg.batch_wait_ms, cfg.top_k, cfg.top_k_fill)
    actor = ray.remote(TeacherServer)
    replicas = (actor.options(name=replica_name(name, r), **options).remote(models, *args) for r in range(cfg.replicas))
    pool = ServerPool(tuple(replicas))
    each = f"{cfg.num_cpus:g} CPUs, {cfg.num_gpus:g} GPUs"
    who = f"TeacherServer ({each})" if cfg.replicas == 1 else f"{cfg.replicas} TeacherServer replicas ({each} each)"
    get_within([r.stats.remote() for r in pool.replicas], START_TIMEOUT_S, f"teacher.mode=server: the {who} starting")
    return pool


class ServedTeacher(TeacherLogits):
    """``teacher.mode: server``: logits from a TeacherServer, spread over its replicas (``server``: a ``ServerPool``
    or one actor handle); ``prefetch`` (a count) next batches' requests are in flight during this step.
    ``received_bytes`` counts what the server's answers carried (a federated round reports it). ``train_logits`` is
    the caller's pass over the training split for ``Method.prepare``, which runs where the trial runs (as inline),
    not on the server: the server's replies may be cut to top-k or a lower dtype."""

    def __init__(
        self,
        server: Any,
        teacher_keys: list[str],
        initial_key: str | None,
        prefetch: int = 1,
        classes: int = 0,
        train_logits: Callable[[], list[Tensor]] = list,
    ) -> None:
        self.teacher_keys, self.initial_key, self.classes = teacher_keys, initial_key, classes
        self.pool = ServerPool.of(server)
        self.spread = Spread(len(self.pool))
        self.split_logits = train_logits
        self.keys = tuple(teacher_keys + ([initial_key] if initial_key else []))
        self.ahead = int(prefetch)  # True/False of older configs read as 1/0
        self.pending: dict[int, tuple[Batch, ray.ObjectRef, int]] = {}  # and the replica asked
        self.received_bytes = 0

    def prefetch(self, batch: Batch) -> None:
        if self.ahead and self.keys and id(batch) not in self.pending:
            self.pending[id(batch)] = (batch, *self._request(batch))

    def _request(self, batch: Batch) -> tuple[ray.ObjectRef, int]:
        """The request for ``batch``'s logits, sent to the replica ``Spread`` picks, and that replica."""
        x = batch.x.cpu()
        replica = self.spread.pick(Counter(r for _, _, r in self.pending.values()))
        return self.pool.replicas[replica].infer.remote(self.keys, Carried(narrowed(x), as_dtype=x.dtype)), replica

    def __call__(self, batch: Batch) -> FrozenLogits:
        if not self.keys:
            return [], None
        _, ref, _ = self.pending.pop(id(batch), (batch, None, 0))
        ref = ref if ref is not None else self._request(batch)[0]
        answer = get_within(ref, ANSWER_TIMEOUT_S, "teacher.mode=server: the TeacherServer's logits")
        self.received_bytes += sum(part.nbytes for part in answer)
        # the one copy of a reply: out of Ray's read-only buffer into float32 rows of this process
        logits = torch.empty(answer[0].shape).copy_(answer[0]) if len(answer) == 1 else self._dense(*answer)
        teachers = list(logits[: len(self.teacher_keys)])
        return teachers, (logits[-1] if self.initial_key else None)

    def train_logits(self) -> list[Tensor]:
        return self.split_logits()

    def _dense(self, values: Tensor, ids: Tensor, tail: Tensor | None = None) -> Tensor:
        """Top-k replies as full rows (``raykd.teacher.cache.dense_logits``: a reply with each row's tail logsumexp
        was asked for the ``mass`` fill), back in the reply's (models, ...) shape."""
        k, flat_tail = values.shape[-1], None if tail is None else tail.reshape(-1)
        flat = dense_logits(values.float().reshape(-1, k), ids.reshape(-1, k), self.classes, flat_tail)
        return flat.reshape(*values.shape[:-1], self.classes)


def served_model(
    key: str,
    checkpoint: Path,
    spec: ModelSpec,
    shape: tuple[int, ...],
    classes: int,
    tokens: bool = False,
    pixels: dict[str, Any] | None = None,
) -> ServedModel:
    # The weights come from the node cache file; the spec's own checkpoint/init files are not needed (or re-checked).
    dump = spec.model_dump(exclude={"checkpoint", "init"})
    return ServedModel(key, str(checkpoint), dump, tuple(shape), classes, tokens, pixels)


def served_teacher(
    cfg: ExperimentConfig, setup: Setup, seed: int, frozen: list[int], initial: int | None, load: LoadNode, server: Any
) -> ServedTeacher:
    """A trial's ``ServedTeacher``: its nodes found on the server by checkpoint content; ``Method.prepare``'s one
    pass over the training split runs in the trial (as inline)."""
    key = lambda node: file_digest(node_path(cfg, node, seed))  # noqa: E731
    server = ServerPool.named(server) if isinstance(server, str) else server
    initial_key = key(initial) if initial is not None else None
    train_x, classes = setup.dataset.train_x, setup.dataset.num_classes
    train = lambda: [predict(load(n), train_x) for n in frozen]  # noqa: E731
    return ServedTeacher(server, [key(n) for n in frozen], initial_key, cfg.teacher.prefetch, classes, train)
