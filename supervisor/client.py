"""Synchronous client of moord's API, used by ``moor`` and by the tests."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

from shim import protocol
from shim.protocol import DeadlineExceeded, Unavailable
from supervisor import zmtp

DEFAULT_STATE = "/run/moorage"
STATE_ENV = "MOORAGE_STATE"


def state_folder(explicit: str | os.PathLike | None = None) -> str:
    # os.path, not pathlib: importing pathlib costs each short command about 3 ms.
    return os.fspath(explicit or os.environ.get(STATE_ENV) or DEFAULT_STATE)


class Client:
    """One DEALER connection to moord's API socket.

    It speaks ZMTP itself (``supervisor.zmtp``) instead of importing pyzmq,
    because pyzmq's import would dominate the time of a short ``moor`` command.
    """

    def __init__(self, state: str | os.PathLike | None = None):
        self.state = state_folder(state)
        self.path = os.path.join(self.state, "moord.sock")
        try:
            self.dealer = zmtp.Dealer(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise Unavailable(
                f"moord is not running: nothing listens on {self.path}. Start it with "
                f"`moord --state {self.state} &` (or `systemctl start moord`), or point "
                f"moor at its state folder with --state or {STATE_ENV}") from None
        except PermissionError:
            raise Unavailable(f"permission denied on {self.path}: run moor as root") from None
        except OSError as exc:
            raise Unavailable(f"could not connect to moord at {self.path}: {exc}") from None
        self.rids = itertools.count(1)

    def send(self, op: str, **args) -> int:
        rid = next(self.rids)
        self.dealer.send(protocol.pack_light(protocol.request(op, rid, **args)))
        return rid

    def call(self, op: str, timeout: float | None = None,
             on_output: Callable[[dict], None] | None = None, **args):
        """Send a request, pass stream messages to ``on_output``, return the result."""
        rid = self.send(op, **args)
        return self.wait(rid, timeout, on_output)

    def wait(self, rid: int, timeout: float | None = None, on_output: Callable[[dict], None] | None = None):
        while True:
            if not self.dealer.poll(timeout):
                raise DeadlineExceeded(f"moord did not respond within {timeout:g} s")
            try:
                message = protocol.unpack_light(self.dealer.recv())
            except zmtp.ProtocolError as exc:
                raise Unavailable(f"lost the connection to moord at {self.path}: {exc}") from None
            if message.get("rid") != rid:
                continue
            if "out" in message:
                if on_output is not None:
                    on_output(message["out"])
                continue
            if "err" in message:
                raise protocol.error_from_wire(message["err"])
            return message.get("ok")

    def close(self) -> None:
        self.dealer.close()


def subscribe_events(state: str | os.PathLike | None = None, topics: tuple[str, ...] = ("",)):
    """Return a pyzmq SUB socket on moord's event socket, filtered by topic prefixes."""
    import zmq

    path = os.path.join(state_folder(state), "events.sock")
    if not os.path.exists(path):
        raise Unavailable(f"moord is not running: no event socket at {path}")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(f"ipc://{path}")
    for topic in topics:
        sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    return sub
