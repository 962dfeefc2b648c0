"""Lean WebSocket clients for bench/push_latency.py, run as a separate process.

    python bench/_push_clients.py URL COUNT

Opens COUNT connections (picows), prints `ready` once every one has its snapshot, then stamps
every `training_status` whose event id is new on its connection, reading nothing else of the
message. On `stop` (stdin) it prints one JSON line: {"cpu_s": ..., "received": {id: [t, ...]}}
with CLOCK_MONOTONIC times (comparable across the processes of one machine).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import defaultdict

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

received: dict[str, list[float]] = defaultdict(list)
MARK = b'"event_id":"'


class Client(WSListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.messages = 0
        self.last = b""
        self.snapshot = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        now = time.monotonic()
        data = frame.get_payload_as_bytes()
        self.messages += 1
        if self.messages == 2 and not self.snapshot.done():
            self.snapshot.set_result(None)  # connected, then the snapshot
        if not data.startswith(b'{"event":"training_status"'):
            return
        at = data.find(MARK)
        if at < 0:
            return
        end = data.index(b'"', at + len(MARK))
        event_id = data[at + len(MARK) : end]
        if event_id != self.last:  # heartbeats repeat the last id
            self.last = event_id
            received[event_id.decode()].append(now)


async def main(url: str, count: int) -> None:
    clients: list[tuple[WSTransport, Client]] = []
    gate = asyncio.Semaphore(64)

    async def one() -> None:
        async with gate:
            transport, client = await ws_connect(Client, url, websocket_handshake_timeout=60)
            await asyncio.wait_for(client.snapshot, 60)
            clients.append((transport, client))

    await asyncio.gather(*(one() for _ in range(count)))
    received.clear()  # what arrived while connecting is not a sample
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for transport, _ in clients:
        transport.disconnect()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime, "received": received}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
