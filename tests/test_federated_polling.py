"""The simulation engine's message hand-out (``federated.polling``) against Flower's, on a real in-memory LinkState."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from queue import Queue
from uuid import uuid4

import pytest
from flwr.app import Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager

from federated import polling
from federated.polling import FLOWER_EXTRACTOR, poll_pending_nodes

RUN = 1


def federation(nodes: int, addressed: list[int]) -> tuple[InMemoryLinkState, dict[int, int]]:
    """A LinkState as ``run_simulation`` builds it, with one evaluation message for each node in ``addressed``."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    mapping = vce_api._register_nodes(nodes, factory)
    state = factory.state()
    run = Run.create_empty(RUN)
    run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
    state.run_ids[RUN] = RunRecord(run=run)
    state.task_store[1] = Task(task_id=1, run_id=RUN)
    ids = list(mapping)
    for partition in addressed:
        message = Message(RecordDict(), dst_node_id=ids[partition], message_type=MessageType.EVALUATE)
        message.metadata.__dict__["_message_id"] = str(uuid4())  # as InMemoryGrid.push_messages does
        assert state.store_message_ins(message)
    return state, mapping


def record_asks(state: InMemoryLinkState, mapping: dict[int, int]) -> set[int]:
    """The partitions the extractor asks the state for messages (filled in as it asks)."""
    asked: set[int] = set()
    get = state.get_message_ins

    def counted(node_id: int, limit: int | None) -> list[Message]:
        asked.add(mapping[node_id])
        return get(node_id=node_id, limit=limit)

    state.get_message_ins = counted  # type: ignore[method-assign]
    return asked


def hand_out(
    extractor: Callable[..., None], state: InMemoryLinkState, mapping: dict[int, int], count: int
) -> list[Message]:
    """Run ``extractor`` until ``count`` messages are queued; the queued messages, in order."""
    queue: Queue[Message] = Queue()
    stop = threading.Event()
    thread = threading.Thread(target=extractor, args=(state, queue, mapping, stop))
    thread.start()
    deadline = time.monotonic() + 30
    while queue.qsize() < count and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join()
    return [queue.get() for _ in range(queue.qsize())]


def test_the_hand_out_matches_flowers_and_asks_only_the_nodes_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    for identity, value in {"_run_id": RUN, "_node_id": SUPERLINK_NODE_ID, "_task_id": 1}.items():
        monkeypatch.setattr(TaskIdentity, identity, value)  # the ServerApp's identity, as run_simulation sets it
    addressed = [7, 3, 250, 42]
    handed: dict[str, list[int]] = {}
    asked: dict[str, set[int]] = {}
    for name, extractor in {"flower": FLOWER_EXTRACTOR, "raykd": poll_pending_nodes}.items():
        state, mapping = federation(300, addressed)
        asked[name] = record_asks(state, mapping)
        messages = hand_out(extractor, state, mapping, len(addressed))
        handed[name] = [mapping[m.metadata.dst_node_id] for m in messages]
        assert all(m.metadata.delivered_at for m in messages)
    assert handed["raykd"] == handed["flower"] == sorted(addressed)  # the same messages, in registration order
    assert asked["flower"] == set(range(300)) and asked["raykd"] == set(addressed)


class Passes(threading.Event):
    """A stop event that records each wait the extractor makes between passes, and stops it after ``count``."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count, self.waits = count, list[float | None]()

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if len(self.waits) >= self.count:
            self.set()
        return self.is_set()


def test_installed_hand_out_passes_at_the_configured_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """``federated.poll_interval`` sets how long the engine waits between looks for messages (Flower's loop: 0.1 s,
    fixed). The waits are recorded, not timed: a loaded machine stretches them but never changes what is asked."""
    monkeypatch.setattr(vce_api, "add_messages_to_queue", FLOWER_EXTRACTOR)  # restored after the test
    state, mapping = federation(4, [])
    for interval in (0.1, 0.01):
        polling.install(interval)
        passes = Passes(3)
        vce_api.add_messages_to_queue(state, Queue(), mapping, passes)
        assert passes.waits == [interval] * 3
