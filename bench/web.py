"""``python -m bench.web``: the web gateway's cost with many open sockets.

Starts one ``cloudbunch web`` process on a fresh namespace, opens ``--sockets`` WebSockets
to it (each a new session), and measures:

- memory per open socket: the gateway's resident memory with the sockets open, minus before
  they opened, divided by their number;
- CPU per relayed message: acting as the router, it publishes ``--messages`` output notices
  per session to the gateway's reply queue, waits until every socket has received its own,
  and divides the gateway's CPU time (user + system) over that phase by the notices relayed
  (each one: consumed, rendered, appended to Redis, published on the session's channel,
  heard back and sent on its socket);
- CPU while idle: the gateway's CPU per second with every socket open and nothing said.

Needs RabbitMQ and Redis (CLOUDBUNCH_AMQP_URL / CLOUDBUNCH_REDIS_URL); deletes its queue
and keys afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import socket
import sys
import time
from pathlib import Path

import aio_pika
import aiohttp

from router.redis_store import RedisStore
from router.store import DEFAULT_REDIS_URL
from worker_sdk import wire
from worker_sdk.settings import DEFAULT_AMQP_URL

from .procs import Proc, cpu_seconds


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Socket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.chat = ""
        self.entries = 0
        self.done = asyncio.Event()
        self.want = 0

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame["type"] == "welcome":
                self.chat = frame["session"]
            elif frame["type"] == "entry":
                self.entries += 1
                if self.want and self.entries >= self.want:
                    self.done.set()


async def run(sockets: int, messages: int, idle: float) -> dict[str, float]:
    amqp_url = os.environ.get("CLOUDBUNCH_AMQP_URL", DEFAULT_AMQP_URL)
    redis_url = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)
    ns = "bw" + secrets.token_hex(4)
    port = free_port()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gateway = await Proc.python("web", "-m", "router.cli", "web", "--namespace", ns,
                                "--port", str(port), "--amqp-url", amqp_url,
                                "--redis-url", redis_url)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    conn = await aio_pika.connect(amqp_url)
    readers: list[asyncio.Task[None]] = []
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(300):
            gateway.check_alive()
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "healthz") as response:
                    if response.status == 200:
                        break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        base_rss = rss_bytes(gateway.pid)
        opened: list[Socket] = []
        for _ in range(sockets):
            ws = await http.ws_connect(url.replace("http", "ws") + "ws", heartbeat=None)
            sock = Socket(ws)
            readers.append(asyncio.create_task(sock.read()))
            await ws.send_str(json.dumps({"type": "hello", "session": None, "last": 0}))
            opened.append(sock)
        while not all(s.chat for s in opened):
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)
        open_rss = rss_bytes(gateway.pid)

        cpu0 = cpu_seconds(gateway.pid) or 0.0
        await asyncio.sleep(idle)
        idle_cpu = ((cpu_seconds(gateway.pid) or 0.0) - cpu0) / idle

        channel = await conn.channel(publisher_confirms=True)
        queue = f"{ns}.web.notices"
        for sock in opened:
            sock.want = messages
        cpu0 = cpu_seconds(gateway.pid) or 0.0
        started = time.perf_counter()
        for i in range(messages):
            batch = []
            for sock in opened:
                notice = wire.Notice(f"web:{sock.chat}", secrets.token_hex(10), "m1", "output",
                                     f"message {i} for this session", None)
                batch.append(channel.default_exchange.publish(
                    aio_pika.Message(wire.encode(notice.to_wire()),
                                     content_type=wire.CONTENT_TYPE,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                     message_id=notice.id),
                    routing_key=queue))
            await asyncio.gather(*batch)
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in opened)), 600)
        elapsed = time.perf_counter() - started
        relay_cpu = (cpu_seconds(gateway.pid) or 0.0) - cpu0
        relayed = sockets * messages
        return {
            "sockets": sockets,
            "relayed": relayed,
            "rss_before_mb": base_rss / 1e6,
            "rss_open_mb": open_rss / 1e6,
            "kb_per_socket": (open_rss - base_rss) / sockets / 1024,
            "cpu_ms_per_relayed": relay_cpu / relayed * 1000,
            "relayed_per_s": relayed / elapsed,
            "idle_cpu_percent": idle_cpu * 100,
        }
    finally:
        for task in readers:
            task.cancel()
        await http.close()
        await gateway.stop()
        gateway.close()
        with contextlib.suppress(Exception):
            channel = await conn.channel()
            await channel.queue_delete(f"{ns}.web.notices")
        await conn.close()
        store = RedisStore(redis_url, ns)
        await store.delete_namespace()
        await store.close()
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000, help="open sockets (1000)")
    parser.add_argument("--messages", type=int, default=5,
                        help="notices relayed per socket (5)")
    parser.add_argument("--idle", type=float, default=10.0,
                        help="seconds of idle CPU measured with the sockets open (10)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.sockets, args.messages, args.idle))
    print(f"web gateway, {result['sockets']:.0f} open sockets, "
          f"{result['relayed']:.0f} notices relayed")
    print(f"  memory: {result['rss_before_mb']:.1f} MB before, {result['rss_open_mb']:.1f} MB "
          f"with the sockets open: {result['kb_per_socket']:.1f} KB per open socket")
    print(f"  CPU per relayed message: {result['cpu_ms_per_relayed']:.3f} ms "
          f"({result['relayed_per_s']:.0f} messages/s)")
    print(f"  CPU while idle with every socket open: {result['idle_cpu_percent']:.1f}% of a core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
