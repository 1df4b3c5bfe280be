"""Print moord's events using only pyzmq and msgpack, without importing Moorage.

Usage: python consume.py [STATE] [TOPIC-PREFIX...]
"""

import sys

import msgpack
import zmq

SUPPORTED_VERSION = 1


def main() -> int:
    state = sys.argv[1] if len(sys.argv) > 1 else "/run/moorage"
    socket = zmq.Context().socket(zmq.SUB)
    socket.connect(f"ipc://{state}/events.sock")
    for prefix in sys.argv[2:] or [""]:
        socket.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    while True:
        topic, body = socket.recv_multipart()
        event = msgpack.unpackb(body, raw=False)
        if event["v"] > SUPPORTED_VERSION:
            print(f"consume.py: event protocol version {event['v']} is newer than {SUPPORTED_VERSION}",
                  file=sys.stderr)
            continue
        print(f"{event['ts']:.6f} {topic.decode()} {event['id'] or '-'} {event['payload']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
