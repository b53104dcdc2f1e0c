"""A light closed-loop HTTP/1.1 load generator: asyncio raw sockets, keep-alive, no dependencies.

`concurrency` connections each send one request, wait for its answer, then send the next, until every
body has been sent once. One event loop in one thread costs far less CPU than a thread per connection
(which matters on a 2-core host where the server needs both cores); its own CPU time is measured and
reported so a starving server would be visible.
"""
from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field


class LoadError(Exception):
    """The server closed a connection or answered something that is not HTTP/1.1."""


@dataclass
class LoadResult:
    statuses: list[int]
    bodies: list[bytes]
    latencies_s: list[float]  # per request, send to last byte of the answer
    wall_s: float
    client_cpu_s: float  # user + system CPU of this process during the run
    errors: list[str] = field(default_factory=list)

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.wall_s if self.wall_s else 0.0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Connection:
    """One keep-alive HTTP/1.1 connection, (re)opened on first use: the one raw client of the benchmarks."""

    def __init__(self, host: str, port: int):
        self.host, self.port, self.reader, self.writer = host, port, None, None

    async def exchange(self, raw: bytes) -> tuple[int, bytes]:
        """Send one raw request, return (status, body); a broken connection is closed and raises LoadError."""
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write(raw)
            await self.writer.drain()
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            if not head[0].startswith("HTTP/1."):
                raise ValueError(f"not an HTTP/1.x status line: {head[0][:80]!r}")
            status = int(head[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:] if ":" in h)}
            body = await self._body(headers)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
            self.close()
            raise LoadError(f"{type(e).__name__}: {e}") from None
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    async def _body(self, headers: dict) -> bytes:
        if headers.get("transfer-encoding", "").lower() != "chunked":
            return await self.reader.readexactly(int(headers.get("content-length", "0")))
        chunks = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await self.reader.readexactly(size + 2))
        await self.reader.readuntil(b"\r\n")
        return b"".join(c[:-2] for c in chunks)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def post(path: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    """The raw bytes of a POST request."""
    fields = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **headers, "Content-Length": len(body)}.items())
    return f"POST {path} HTTP/1.1\r\n{fields}\r\n".encode() + body


async def _run(host: str, port: int, path: str, bodies: list[bytes], headers: dict[str, str], concurrency: int,
               result: LoadResult) -> None:
    pending = iter(range(len(bodies)))

    async def connection() -> None:
        conn = Connection(host, port)
        try:
            for i in pending:  # the shared iterator hands each index to exactly one connection
                start = time.perf_counter()
                status, answer = await conn.exchange(post(path, f"{host}:{port}", headers, bodies[i]))
                result.latencies_s[i] = time.perf_counter() - start
                result.statuses[i], result.bodies[i] = status, answer
        except LoadError as e:
            result.errors.append(str(e))
        finally:
            conn.close()

    await asyncio.gather(*(connection() for _ in range(min(concurrency, len(bodies)))))


def run_load(host: str, port: int, path: str, bodies: list[bytes], headers: dict[str, str],
             concurrency: int) -> LoadResult:
    """Send every body once over `concurrency` keep-alive connections; raise LoadError if any failed."""
    n = len(bodies)
    result = LoadResult([0] * n, [b""] * n, [0.0] * n, 0.0, 0.0)
    cpu, start = _cpu(), time.perf_counter()
    asyncio.run(_run(host, port, path, bodies, headers, concurrency, result))
    result.wall_s, result.client_cpu_s = time.perf_counter() - start, _cpu() - cpu
    if result.errors:
        raise LoadError(f"{len(result.errors)} connection(s) failed, first: {result.errors[0]}")
    return result
