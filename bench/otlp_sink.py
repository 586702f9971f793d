"""``python -m bench.otlp_sink``: an OTLP/HTTP endpoint that takes spans and drops them.

For measuring what tracing costs with the exporter a deployment would use (``otlp``, batched
off the step's path) without running a collector: point ``OTEL_EXPORTER_OTLP_ENDPOINT`` at
it (default ``http://127.0.0.1:4318``). Stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def _sink(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=200, content_type="application/x-protobuf", body=b"")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.otlp_sink", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=4318)
    args = p.parse_args(argv)
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/traces", _sink)
    print(f"OTLP/HTTP sink on http://127.0.0.1:{args.port} (spans are dropped)", flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
