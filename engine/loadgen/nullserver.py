"""A null server: answers every HTTP request at once with a canned score answer.

It measures the load generator alone (`benchmarks/load_http.py --self-test`), in a process of its
own so that it shares the cores as the real service would:

    python -m antifraud.engine.loadgen.nullserver PORT
"""

from __future__ import annotations

import asyncio
import re
import sys

from antifraud.engine.loadgen.client import run_async

CANNED = (
    b'{"transaction_id":"x","verdict":"allow","score":1.6e-6,"risk_score":0,"reasons":{"rules":[],'
    b'"shadow_rules":[],"skipped_rules":[],"model":[]},"model_version":"m","rules_version":"r",'
    b'"degraded":[],"timings":{"features_ms":0,"model_ms":0,"rules_ms":0,"total_ms":0,"log_ms":0}}'
)


class NullServer(asyncio.Protocol):
    """Answers every request on its connection with `CANNED`, as soon as the request is complete."""

    answer = (
        b"HTTP/1.1 200 OK\r\nserver: null\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(CANNED)).encode()
        + b"\r\n\r\n"
        + CANNED
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            match = re.search(rb"(?i)content-length: *(\d+)", self.buffer[:end])
            size = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < size:
                return
            del self.buffer[:size]
            self.transport.write(self.answer)


def null_server(port: int) -> None:
    """Serve NullServer on 127.0.0.1:port until killed."""

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(NullServer, "127.0.0.1", port)
        await server.serve_forever()

    run_async(main())


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        raise SystemExit("usage: python -m antifraud.engine.loadgen.nullserver PORT")
    null_server(int(sys.argv[1]))
