"""Follow the data event stream: persisted events after an id first, then live ones (Ctrl-C stops).

python clients/examples/follow_events.py [AFTER_EVENT_ID]
"""

from __future__ import annotations

import sys

from kitrading.client import KitradingError, connect
from kitrading.data.v1.request_response_pb2 import WatchEventsRequest
from kitrading.data.v1.resources_pb2 import EventType


def follow(after: int = 0, *, limit: int | None = None, target: str | None = None) -> list[int]:
    """Print events as they arrive; stop after `limit` events (None: until interrupted)."""
    seen: list[int] = []
    with (
        connect(target) as client,
        client.data.watch_events(WatchEventsRequest(after_event_id=after)) as stream,
    ):
        for response in stream:  # Iterator[WatchEventsResponse]; errors raise KitradingError here
            event = response.event
            print(event.event_id, EventType.Name(event.type), event.symbol, flush=True)
            seen.append(event.event_id)
            if limit is not None and len(seen) >= limit:
                break  # leaving the `with` block cancels the call
    return seen


def main() -> int:
    after = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    try:
        follow(after)
    except KeyboardInterrupt:
        return 0
    except KitradingError as exc:
        print(f"stream failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
