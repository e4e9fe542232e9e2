"""The TeacherServer's batching and wire format, in this process (no Ray): continuous batching (an idle server starts
at once, requests arriving during a forward merge into the next, within ``max_batch_rows``), replies that carry only
their own rows, and integer inputs narrowed for the trip and widened back unchanged; and ``teacher.replicas``: a
student's requests spread over the replicas, whose answers are one server's."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from raykd.config import ModelSpec, TeacherConfig
from raykd.engine import Batch
from raykd.files import file_digest
from raykd.models import build_model
from raykd.teacher.replicas import ServerPool, Spread, combined
from raykd.teacher.server import Carried, ServedTeacher, TeacherServer, narrowed, served_model, start_server

SHAPE = (1, 40)
BOUND_S = 60  # how long a test waits for the server to reach a state before it fails


def random_teacher(folder: Path) -> tuple[Any, torch.nn.Module]:
    """One random ``cnn1d`` saved as a checkpoint file: what a server loads, and the same model in this process."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="cnn1d"), SHAPE, 10).eval()
    path = folder / "teacher.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return served_model(file_digest(path), path, ModelSpec(name="cnn1d"), SHAPE, 10), model


@pytest.fixture
def served(tmp_path: Path) -> tuple[TeacherServer, torch.nn.Module, str]:
    """A server for one random ``cnn1d``, and the same model in this process."""
    info, model = random_teacher(tmp_path)
    return TeacherServer([info], "cpu", "float32", 100, 0.0), model, info.key


def gate(server: TeacherServer) -> tuple[list[list[int]], threading.Event, threading.Event]:
    """Record each forward's request sizes; hold the first forward until ``release`` is set."""
    seen: list[list[int]] = []
    entered, release = threading.Event(), threading.Event()
    forward = server._forward

    def held(keys: tuple[str, ...], xs: list[torch.Tensor]) -> Any:
        seen.append([len(x) for x in xs])
        if len(seen) == 1:
            entered.set()
            assert release.wait(BOUND_S), "the test never released the held forward"
        return forward(keys, xs)

    server._forward = held  # type: ignore[method-assign]
    return seen, entered, release


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the server's tasks until ``condition`` holds; fail after ``BOUND_S``."""
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"the server never reached: {what}"
        await asyncio.sleep(0)


def arrived(answer: tuple[Carried, ...]) -> tuple[torch.Tensor, ...]:
    """An answer as the caller gets it: pickled with out-of-band buffers, as Ray does."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(answer, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(data, buffers=buffers)


def test_an_idle_server_starts_at_once_and_requests_during_a_forward_merge_into_the_next(served: tuple) -> None:
    server, model, key = served
    seen, entered, release = gate(server)
    xs = [torch.randn(rows, *SHAPE) for rows in (30, 40, 60, 20)]

    async def scenario() -> list[tuple[Carried, ...]]:
        first = asyncio.create_task(server.infer((key,), xs[0]))
        assert await asyncio.to_thread(entered.wait, BOUND_S)  # its forward runs: it began with that request alone
        later = [asyncio.create_task(server.infer((key,), x)) for x in xs[1:]]
        await until(lambda: len(server.queue) == 3, "three requests queued behind the running forward")
        release.set()
        return await asyncio.gather(first, *later)

    answers = asyncio.run(scenario())
    assert seen == [[30], [40, 60], [20]]  # merged in arrival order, up to max_batch_rows (100): 40 + 60, then 20
    assert server.counters["batches"] == 3 and server.counters["requests"] == 4
    with torch.no_grad():
        for x, answer in zip(xs, answers, strict=True):
            (logits,) = arrived(answer)
            assert logits.shape == (1, len(x), 10)
            assert torch.allclose(logits[0], model(x), atol=1e-6)  # each caller its own rows of the merged forward


def test_batch_wait_ms_makes_an_idle_server_wait_for_more_rows_until_a_batch_is_full(served: tuple) -> None:
    server, _, key = served
    server.wait_s = 1000.0  # a forward would start only when max_batch_rows (100) are queued
    seen, _, release = gate(server)
    release.set()

    async def scenario() -> None:
        first = asyncio.create_task(server.infer((key,), torch.randn(60, *SHAPE)))
        waiting = lambda: server.batcher is not None and bool(server.queue) and not server.arrived.is_set()  # noqa: E731
        await until(waiting, "an idle server holding the first request, waiting for more")
        await asyncio.gather(first, server.infer((key,), torch.randn(40, *SHAPE)))

    asyncio.run(scenario())
    assert seen == [[60, 40]]


def test_a_reply_carries_only_its_own_rows_once_and_arrives_as_the_models_rows_view() -> None:
    merged = torch.randn(2048, 2, 10)  # (rows, models, classes), as the server's forward returns it
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(Carried(merged[256:512], rows_first=True), protocol=5, buffer_callback=buffers.append)
    assert sum(memoryview(b).nbytes for b in buffers) == 256 * 2 * 10 * 4  # this reply's rows, not the whole answer
    assert len(data) < 1000  # ... out of band; a torch slice would pickle all 2048 rows
    got = pickle.loads(data, buffers=buffers)
    assert got.shape == (2, 256, 10) and torch.equal(got, merged[256:512].transpose(0, 1))
    half = torch.randn(8, 1, 10).to(torch.bfloat16)  # numpy has no bfloat16: carried as its bits
    assert torch.equal(arrived((Carried(half, rows_first=True),))[0], half.transpose(0, 1))


def test_a_served_teacher_gets_float32_rows_of_its_own_from_float16_replies(ray_session: Any, tmp_path: Path) -> None:
    info, model = random_teacher(tmp_path)
    server = start_server([info], TeacherConfig(mode="server", num_cpus=0.5, dtype="float16"))
    teacher = ServedTeacher(server, [info.key, info.key], None, prefetch=1)
    rows = torch.arange(64)
    batches = [Batch(torch.randn(64, *SHAPE), rows, rows > -1, rows) for _ in range(3)]
    for i, batch in enumerate(batches):
        teacher.prefetch(batches[(i + 1) % 3])
        teachers, initial = teacher(batch)
        assert initial is None and len(teachers) == 2
        for logits in teachers:
            assert logits.dtype == torch.float32 and logits.is_contiguous() and logits.shape == (64, 10)
            with torch.no_grad():
                assert torch.allclose(logits, model(batch.x), atol=2e-2)
        teachers[0].add_(1.0)  # its own memory: writable, and not the other model's rows
        assert not torch.allclose(teachers[0], teachers[1])
    server.kill()


@pytest.mark.parametrize(
    ("ids", "sent"),
    [([0, 256, 5], torch.int16), ([0, 255], torch.uint8), ([0, 70_000], torch.int32), ([-1, 3], torch.int16)],
)
def test_token_ids_travel_narrowed_and_arrive_unchanged(ids: list[int], sent: torch.dtype) -> None:
    x = torch.tensor(ids, dtype=torch.int64).repeat(4, 1)
    assert narrowed(x).dtype == sent
    (got,) = arrived((Carried(narrowed(x), as_dtype=x.dtype),))
    assert got.dtype == torch.int64 and torch.equal(got, x)  # the server's model sees what an inline teacher sees
    images = torch.randn(2, 3, 4, 4)
    assert narrowed(images) is images  # floats travel as they are


def served_logits(server: ServerPool, key: str, batches: list[Batch]) -> list[torch.Tensor]:
    """One student's logits for ``batches``, requested as ``fit`` does (the next batch prefetched)."""
    teacher, out = ServedTeacher(server, [key], None, prefetch=1), []
    for i, batch in enumerate(batches):
        if i + 1 < len(batches):
            teacher.prefetch(batches[i + 1])
        out.append(teacher(batch)[0][0])
    return out


def test_two_replicas_answer_as_one_server_does_and_one_students_requests_reach_both(
    ray_session: Any, tmp_path: Path
) -> None:
    info, _ = random_teacher(tmp_path)
    rows = torch.arange(64)
    batches = [Batch(torch.randn(64, *SHAPE), rows, rows > -1, rows) for _ in range(6)]
    one = start_server([info], TeacherConfig(mode="server", num_cpus=0.5))
    expected = served_logits(one, info.key, batches)
    one.kill()
    name = f"raykd-test-replicas-{uuid.uuid4().hex[:8]}"
    two = start_server([info], TeacherConfig(mode="server", num_cpus=0.5, replicas=2), name=name)
    assert ServerPool.named(name) == two  # a trial that knows the name finds every replica, in order
    for got, want in zip(served_logits(two, info.key, batches), expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    each = two.each_stats()
    assert [s["requests"] for s in each] == [3, 3]  # the prefetched request goes to the replica not busy for it
    stats = two.stats()
    assert stats["replicas"] == 2 and stats["requests"] == 6 and stats["rows"] == 6 * 64
    two.kill()


def test_a_student_picks_the_replica_with_fewest_of_its_requests_out_ties_in_turn() -> None:
    spread = Spread(3)
    start = spread.next
    assert [spread.pick({}) for _ in range(4)] == [(start + i) % 3 for i in range(4)]  # round-robin from its offset
    assert spread.pick({0: 2, 1: 1, 2: 1}) in (1, 2) and spread.pick({0: 0, 1: 1, 2: 1}) == 0
    assert Spread(1).pick({0: 5}) == 0


def test_the_replicas_statistics_add_up_as_one_servers() -> None:
    one = {"requests": 4, "rows": 40, "batches": 2, "max_batch_rows": 30, "wait_s": 0.5, "compute_s": 1.0}
    one |= {"peak_rss_mb": 100.0, "mean_batch_rows": 20.0, "device": "cpu", "node_id": "n1"}
    assert combined([one]) is one  # one replica: exactly its own
    other = one | {"requests": 2, "rows": 60, "batches": 1, "max_batch_rows": 60, "node_id": "n2"}
    both = combined([one, other])
    assert both["requests"] == 6 and both["rows"] == 100 and both["batches"] == 3 and both["max_batch_rows"] == 60
    assert both["mean_batch_rows"] == pytest.approx(100 / 3) and both["node_id"] == "n1,n2" and both["device"] == "cpu"
    assert both["replicas"] == 2 and (both["replica0.requests"], both["replica1.requests"]) == (4, 2)
