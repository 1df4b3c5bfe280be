"""Lifecycle events published on moord's PUB socket and to in-process listeners."""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from shim import protocol

log = logging.getLogger(__name__)


class EventBus:
    """Publishes ``[topic, envelope]`` frames; subscribers filter by topic prefix."""

    def __init__(self, context: zmq.Context, path):
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 10000)
        self.socket.bind(f"ipc://{path}")
        self.listeners: list[Callable[[dict], None]] = []

    def publish(self, topic: str, container_id: str | None, **payload) -> None:
        envelope = protocol.event(topic, container_id, payload)
        log.debug("event %s for %s", topic, container_id)
        try:
            self.socket.send_multipart([topic.encode(), protocol.pack(envelope)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("event %s for container %s not published: %s", topic, container_id, exc)
        for listener in list(self.listeners):
            listener(envelope)

    def close(self) -> None:
        self.socket.close(linger=0)
