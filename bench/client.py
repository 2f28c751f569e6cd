"""The benchmarks' HTTP client: keep-alive HTTP/1.1 connections on asyncio streams, a fixed number in flight.

A client this thin leaves the CPU to the server: httpx spends about 3.5 ms of CPU a request
here, as much as the service itself, and both share the same two cores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

__all__ = ["WARM_UP", "Connection", "Request", "load"]

#: Requests a connection sends before the timed ones (the server's first requests warm its caches and pools).
WARM_UP = 2

#: The i-th request: its path, body and headers.
Request = Callable[[int], tuple[str, bytes, dict[str, str]]]


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs a body and reads the answer's status, headers and body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        return cls(*await asyncio.open_connection(parts.hostname, parts.port), parts.netloc)

    async def send(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        self.writer.write(head.encode() + body)
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        return int(status_line.split()[1]), fields, await self.reader.readexactly(int(fields["content-length"]))

    def close(self) -> None:
        self.writer.close()


async def load(url: str, request: Request, concurrency: int, requests: int) -> tuple[list[float], float, float]:
    """Per-request seconds, wall seconds and client CPU seconds of ``requests`` requests, ``concurrency`` in flight,
    after ``WARM_UP`` a connection (not timed, but within the server's CPU a caller reads around this).

    ``request(i)`` builds the i-th request; whatever it computes (decoding a GeoTIFF) is the client's CPU.
    """
    latencies: list[float] = []
    connections = [await Connection.open(url) for _ in range(concurrency)]

    async def worker(conn: Connection, todo: Iterator[int]) -> None:
        for i in todo:
            start = time.perf_counter()
            path, body, headers = request(i)
            status, _, answer = await conn.send(path, body, headers)
            if status != 200:
                raise RuntimeError(f"POST {url}{path}: {status} {answer[:300]!r}")
            latencies.append(time.perf_counter() - start)

    try:
        todo = iter(range(WARM_UP * concurrency))
        await asyncio.gather(*(worker(c, todo) for c in connections))
        latencies.clear()
        todo = iter(range(requests))
        cpu, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(c, todo) for c in connections))
        return latencies, time.perf_counter() - start, time.process_time() - cpu
    finally:
        for c in connections:
            c.close()
