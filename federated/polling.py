"""Flower's simulation engine, polling only the nodes that have a message waiting.

Flower 1.42's engine hands messages to client actors from one thread
(``raykd.compat.flower_extractor``) that asks the in-memory LinkState,
every 0.1 s, for each registered node's next message; each ask scans every stored message. A pass
therefore costs nodes x messages: with 1,000 nodes and 10 messages in flight it took about 220 ms of
the driver's CPU (a loaded 2-core machine, ``benchmarks/federated_scale.py``), so the thread was busy
two thirds of the time, the cost growing with the federation rather than with the sampled clients.
``poll_pending_nodes`` asks only the nodes that are some undelivered message's destination, in the same
order, one message each per pass, as Flower does; other LinkStates get Flower's own loop.
"""

from __future__ import annotations

import threading
from functools import partial
from queue import Queue

from flwr.app import Message
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkState

from raykd.compat import flower_extractor, undelivered_destinations, use_flower_extractor

#: Flower's own extractor, for LinkStates other than the in-memory one (read before ``install`` replaces it).
FLOWER_EXTRACTOR = flower_extractor()
#: How long the extractor waits between passes unless told (Flower's value; the CLI passes federated.poll_interval).
POLL_INTERVAL_S = 0.1


def poll_pending_nodes(
    state: LinkState,
    queue: Queue[Message],
    nodes_mapping: dict[int, int],
    f_stop: threading.Event,
    interval_s: float = POLL_INTERVAL_S,
) -> None:
    """Flower's ``add_messages_to_queue`` (same arguments and order), visiting only nodes with a message waiting;
    every ``interval_s`` (Flower's loop waits 0.1 s, fixed)."""
    if not isinstance(state, InMemoryLinkState):
        FLOWER_EXTRACTOR(state, queue, nodes_mapping, f_stop)
        return
    while not f_stop.is_set():
        pending = undelivered_destinations(state)
        for node_id in (n for n in nodes_mapping if n in pending):
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(interval_s)


def install(interval_s: float = POLL_INTERVAL_S) -> None:
    """Make this process's simulations use ``poll_pending_nodes``, passing every ``interval_s`` (the engine looks
    the function up per run)."""
    use_flower_extractor(partial(poll_pending_nodes, interval_s=interval_s))
