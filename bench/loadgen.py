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


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise LoadError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(c[:-2] for c in chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", 0)))
    return int(parts[1]), body


async def _run(host: str, port: int, path: str, bodies: list[bytes], headers: dict[str, str], concurrency: int,
               result: LoadResult) -> None:
    fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
    pending = iter(range(len(bodies)))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in pending:  # the shared iterator hands each index to exactly one connection
                body = bodies[i]
                request = f"POST {path} HTTP/1.1\r\n{fixed}Content-Length: {len(body)}\r\n\r\n".encode() + body
                start = time.perf_counter()
                writer.write(request)
                status, answer = await _read_response(reader)
                result.latencies_s[i] = time.perf_counter() - start
                result.statuses[i], result.bodies[i] = status, answer
        except (asyncio.IncompleteReadError, ConnectionError, LoadError) as e:
            result.errors.append(f"{type(e).__name__}: {e}")
        finally:
            writer.close()

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
