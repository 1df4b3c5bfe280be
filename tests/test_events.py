"""The event vocabulary is a contract: topics, envelope fields and their order."""

from __future__ import annotations

import time

import zmq

from shim import protocol
from supervisor.client import subscribe_events


def collect_events(sub: zmq.Socket, container_id: str, until_topic: str, timeout: float = 30.0) -> list[dict]:
    """Read events of one container until ``until_topic`` arrives."""
    events = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sub.poll(200):
            continue
        topic, body = sub.recv_multipart()
        event = protocol.unpack(body)
        assert event["topic"] == topic.decode()
        if event["id"] != container_id:
            continue
        events.append(event)
        if event["topic"] == until_topic:
            return events
    raise AssertionError(f"no {until_topic} event within {timeout:g} s; got {[e['topic'] for e in events]}")


def subscribed(moord) -> zmq.Socket:
    sub = subscribe_events(moord.state)
    time.sleep(0.2)  # a SUB socket drops what is published before its subscription reaches the PUB
    return sub


def test_events_task_order(moord):
    sub = subscribed(moord)
    container_id = moord.moor("run", "-d", "--name", "ordered", "busybox", "sleep", "60").stdout.decode().strip()
    moord.moor("exec", "ordered", "true")
    moord.moor("rm", "-f", "ordered")

    topics = [event["topic"] for event in collect_events(sub, container_id, protocol.TOPIC_CONTAINER_DELETE)]

    assert topics == [protocol.TOPIC_CONTAINER_CREATE, protocol.TOPIC_TASK_START,
                      protocol.TOPIC_TASK_EXEC_STARTED, protocol.TOPIC_TASK_EXEC_EXIT,
                      protocol.TOPIC_TASK_EXIT, protocol.TOPIC_CONTAINER_DELETE]


def test_events_envelope_fields(moord):
    sub = subscribed(moord)
    container_id = moord.moor("run", "-d", "busybox", "sh", "-c", "exit 4").stdout.decode().strip()

    events = collect_events(sub, container_id, protocol.TOPIC_TASK_EXIT)
    exit_event = events[-1]

    assert exit_event["v"] == protocol.VERSION
    assert exit_event["payload"]["exit_code"] == 4
    assert exit_event["ts"] >= exit_event["payload"]["exited_at"]
