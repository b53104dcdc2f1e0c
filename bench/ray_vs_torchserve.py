"""Ray Serve vs TorchServe on ONE archive with the same deployment shape (the archive's batch size and delay,
minWorkers workers = replicas, the same threads each): served p50 latency at concurrency 1, throughput at
concurrency 32 (one text per request, and 8 texts per request at 4 in flight), the cores each part of each server
used meanwhile, and each server's idle cost (RSS of its whole process tree, CPU% over --idle-s seconds idle).

    python -m bench.ray_vs_torchserve [--archive model-archive/store/classifier-1.0.mar] [--requests 2000]

Run it alone on the machine: the two servers are measured one after the other, never side by side. Writes
bench/results/ray_vs_torchserve.{json,md}.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench import write_results
from bench.loadgen import run_load
from bench.serve_bench import machine
from bench.serve_report import cpu_class
from textclf.core import paths
from textclf.core.errors import UserError
from textclf.core.options import command_line, option, run
from textclf.rayserve import ops
from textclf.rayserve.shape import CACHE_ENV, ModelShape
from textclf.torchserve import server
from textclf.torchserve.keys import bearer, read_keys
from textclf.torchserve.ports import free_ports
from textclf.torchserve.temporary import temporary_server

RESULTS = Path(__file__).parent / "results"
PER_REQUEST = 8  # texts per request of the lists row: 32 texts in flight in 4 requests
TEXTS = ["What a wonderful day!", "terrible service, I want a refund now", "the card has not arrived yet",
         "ok", "I would like to change my PIN, how do I do that?", "dull and lifeless, two hours I will never get back"]


@dataclass
class RayVsTorchServeConfig:
    """served latency, throughput and idle cost of Ray Serve vs TorchServe on one archive"""

    archive: Path | None = option("the .mar to serve (default: the newest of model-archive/store)", None)
    requests: int = option("requests of the concurrency-32 throughput run", 2000)
    latency_requests: int = option("requests of the concurrency-1 latency run", 200)
    concurrency: int = option("connections of the throughput run", 32)
    idle_s: float = option("seconds of idle CPU measured per server", 10.0)
    out: Path = option("results stem", RESULTS / "ray_vs_torchserve")

    def __post_init__(self):
        if self.archive is None:
            found = sorted(paths.MODEL_STORE.glob("*.mar"), key=lambda p: p.stat().st_mtime)
            if not found:
                raise UserError(f"no archive in {paths.MODEL_STORE}: run `make demo` or pass --archive")
            self.archive = found[-1]
        self.archive, self.out = Path(self.archive), Path(self.out)
        if not self.archive.is_file():
            raise UserError(f"--archive {self.archive}: no such file")


def bodies(n: int, per_request: int = 1, tag: str = "") -> list[bytes]:
    """`n` request bodies of texts unique to `tag` (the response cache never answers them), one text each or in
    lists."""
    if per_request == 1:
        return [json.dumps({"text": f"{TEXTS[i % len(TEXTS)]} #{tag}{i}"}).encode() for i in range(n)]
    return [json.dumps({"texts": [f"{TEXTS[(i + j) % len(TEXTS)]} #{tag}{i}.{j}" for j in range(per_request)]}).encode()
            for i in range(n)]


def cpu_seconds(procs: list[psutil.Process], role) -> dict[str, float]:
    """User + system CPU seconds of each role (role(process) names it) among `procs`."""
    out: dict[str, float] = {}
    for p in procs:
        try:
            t, name = p.cpu_times(), role(p)
        except psutil.Error:
            continue
        out[name] = out.get(name, 0.0) + t.user + t.system
    return out


def measure(host: str, port: int, path: str, headers: dict, c: RayVsTorchServeConfig, procs, role) -> dict:
    """p50 at concurrency 1, texts/s at concurrency 32 one text per request (with the cores each part of the server
    used meanwhile) and the same texts in flight sent 8 to a request. Each load runs once unmeasured first: TorchScript
    optimises its graph for each new input shape in the first calls that see it, and the two servers form batches of
    different shapes, so a short warm-up would leave one of them paying it inside the measurement."""
    lists = c.concurrency // PER_REQUEST
    loads = {"c1": (c.latency_requests, 1, 1), "c32": (c.requests, 1, c.concurrency),
             "lists": (c.requests // PER_REQUEST, PER_REQUEST, lists)}
    out = {}
    for key, (n, per_request, concurrency) in loads.items():
        # Other texts than the measured ones: a text seen in the warm-up would be answered from the response cache.
        run_load(host, port, path, bodies(n, per_request, f"warm-{key}-"), headers, concurrency)
        sent = bodies(n, per_request, f"{key}-")
        before = cpu_seconds(procs(), role)
        result = run_load(host, port, path, sent, headers, concurrency)
        after = cpu_seconds(procs(), role)
        if set(result.statuses) != {200}:
            raise RuntimeError(f"statuses {sorted(set(result.statuses))} from {path}")
        texts = len(result.statuses) * (PER_REQUEST if key == "lists" else 1)
        if key == "c1":
            latencies = sorted(result.latencies_s)
            out["p50_ms_c1"] = round(1000 * statistics.median(latencies), 2)
            out["p99_ms_c1"] = round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2)
        elif key == "c32":
            out[f"texts_per_s_c{c.concurrency}"] = round(texts / result.wall_s, 1)
            out["cores_c32"] = {name: round((after.get(name, 0.0) - before.get(name, 0.0)) / result.wall_s, 2)
                                for name in sorted(after)}
            out["client_cores"] = round(result.client_cores, 2)
        else:
            out[f"texts_per_s_lists_c{lists}"] = round(texts / result.wall_s, 1)
    return out


def idle_cost(procs: list[psutil.Process], seconds: float) -> dict:
    """RSS of the tree now and the CPU it used over `seconds` of no traffic."""
    time.sleep(2)  # the last requests' aftermath
    before = sum(cpu_seconds(procs, lambda p: "all").values())
    time.sleep(seconds)
    used = sum(cpu_seconds(procs, lambda p: "all").values()) - before
    rss = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
        except psutil.Error:
            pass
    return {"processes": len(procs), "rss_mb": round(rss / 2**20, 1), "idle_cpu_percent": round(100 * used / seconds, 2)}


def torchserve_role(p: psutil.Process) -> str:
    return "frontend (Java)" if "java" in p.name() else "workers"


def ray_role(p: psutil.Process) -> str:
    title = " ".join(p.cmdline())
    for part, role in (("ProxyActor", "HTTP proxy"), ("ServeReplica:textclf:ingress", "ingress"),
                       (":model", "model replicas")):
        if part in title:
            return role
    return "Ray's other processes"


def torchserve_pass(c: RayVsTorchServeConfig, shape: ModelShape) -> dict:
    with tempfile.TemporaryDirectory(prefix="ts-vs-ray-") as store:
        shutil.copy2(c.archive, Path(store) / c.archive.name)
        with temporary_server(Path(store), prefix="ts-vs-ray-") as srv:
            srv.client().register(shape.name, c.archive.name, initial_workers=shape.replicas,
                                  batch_size=shape.batch_size, max_batch_delay=int(shape.batch_delay_ms))
            ep = srv.endpoints
            headers = {**bearer(read_keys(ep.key_file).inference), "Content-Type": "application/json"}
            port = int(ep.inference_url.rsplit(":", 1)[1])
            root = psutil.Process(server.running_pid(srv.cfg))

            def procs() -> list[psutil.Process]:
                return [root, *root.children(recursive=True)]

            served = measure("127.0.0.1", port, f"/predictions/{shape.name}", headers, c, procs, torchserve_role)
            return {**served, "idle": idle_cost(procs(), c.idle_s)}


def ray_pass(c: RayVsTorchServeConfig, shape: ModelShape) -> dict:
    base = Path(tempfile.mkdtemp(prefix="ray-vs-ts-"))
    os.environ[CACHE_ENV] = str(base / "bundles")
    try:
        port = free_ports(1)[0]
        state = ops.start_head(base / "state", "127.0.0.1", port, True, 300)
        ops.deploy(base / "state", {"source": str(c.archive.resolve())}, timeout_s=600)
        headers = {**bearer(read_keys(Path(state["key_file"])).inference), "Content-Type": "application/json"}
        served = measure("127.0.0.1", port, f"/predictions/{shape.name}", headers, c,
                         lambda: ops.head_processes(state), ray_role)
        return {**served, "idle": idle_cost(ops.head_processes(state), c.idle_s)}
    finally:
        ops.stop_head(base / "state")
        shutil.rmtree(base, ignore_errors=True)


def markdown(r: dict) -> str:
    lists = r["concurrency"] // PER_REQUEST
    lines = [f"# Ray Serve vs TorchServe ({r['cpu_class']}, {r['cores']} cores)", "",
             f"`{r['command']}`, {r['date']}: {r['archive']}, {r['shape']['replicas']} replica(s) x "
             f"{r['shape']['threads']} thread(s), batches of {r['shape']['batch_size']} within "
             f"{r['shape']['batch_delay_ms']:g} ms, the two servers one after the other on the same machine.", "",
             f"| server | p50 ms (c=1) | p99 ms (c=1) | texts/s (c={r['concurrency']}) | texts/s ({PER_REQUEST} texts a "
             f"request, c={lists}) | idle RSS MB | idle CPU % | processes |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("torchserve", "ray"):
        s = r[name]
        lines.append(f"| {name} | {s['p50_ms_c1']} | {s['p99_ms_c1']} | {s['texts_per_s_c' + str(r['concurrency'])]} | "
                     f"{s[f'texts_per_s_lists_c{lists}']} | {s['idle']['rss_mb']} | {s['idle']['idle_cpu_percent']} | "
                     f"{s['idle']['processes']} |")
    lines += ["", f"Cores busy during the c={r['concurrency']} row, by part of the server:", ""]
    for name in ("torchserve", "ray"):
        parts = ", ".join(f"{k} {v}" for k, v in r[name]["cores_c32"].items())
        lines.append(f"- {name}: {parts}; load generator {r[name]['client_cores']}")
    return "\n".join(lines) + "\n"


def main(c: RayVsTorchServeConfig) -> dict:
    shape = ModelShape.from_args({"source": str(c.archive)})
    host = machine()
    results = {"command": command_line("python -m bench.ray_vs_torchserve", c), "config": asdict(c),
               "archive": str(c.archive),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": host,
               "cpu_class": cpu_class(host["isa"]), "cores": os.cpu_count(),
               "concurrency": c.concurrency, "shape": shape.describe(),
               "torchserve": torchserve_pass(c, shape), "ray": ray_pass(c, shape)}
    write_results(c.out.parent, c.out.name, results, markdown(results))
    return results


def command(argv=None, prog="python -m bench.ray_vs_torchserve") -> int:
    return run(main, RayVsTorchServeConfig, argv, prog=prog, show=markdown)


if __name__ == "__main__":
    sys.exit(command())
