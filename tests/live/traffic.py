"""Continuous prediction traffic from threads (REST and gRPC clients with their retries), for tests that
change the server underneath it. Every call ends as an answer or an error, so nothing can go missing."""
from __future__ import annotations

import threading
import time
from collections import Counter

from textclf.torchserve.properties import Endpoints

# A wait (or one request) that takes this long means the server stopped answering. Requests get the same limit
# rather than the clients' 60 s default: on a 2-core machine at load average 8, requests sent around a killed
# worker's restart have waited over a minute; these tests ask that none is lost, and a late answer is one.
LIMIT_S = 120.0


class Traffic:
    def __init__(self, endpoints: Endpoints, model: str, rest_threads: int = 6, grpc_threads: int = 2,
                 retries: int = 4, backoff_s: float = 0.1):
        self.endpoints, self.model, self.retries, self.backoff_s = endpoints, model, retries, backoff_s
        self.labels: list[frozenset] = []  # label set of every answer, in arrival order
        self.errors: list[str] = []
        self.retried = Counter()  # REST statuses the client saw and retried (503, 500/507 "Worker died.")
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._rest, args=(i,), daemon=True) for i in range(rest_threads)]
        self._threads += [threading.Thread(target=self._grpc, args=(i,), daemon=True) for i in range(grpc_threads)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(LIMIT_S)
        assert not any(t.is_alive() for t in self._threads), "a client thread hung"

    def _loop(self, call, close=None) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                answer = call(f"request {i} from {threading.current_thread().name}")
                with self._lock:
                    self.labels.append(frozenset(answer["scores"]))
            except Exception as e:  # noqa: BLE001 - every failure is recorded and asserted on
                with self._lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
        if close:
            close()

    def _rest(self, _: int) -> None:
        from textclf.torchserve.rest import TorchServeClient

        ep = self.endpoints
        client = TorchServeClient(ep.inference_url, ep.management_url, ep.key_file, timeout=LIMIT_S,
                                  retries=self.retries, backoff_s=self.backoff_s)
        client.session.hooks["response"].append(self._seen)
        self._loop(lambda text: client.predict(self.model, text))

    def _grpc(self, _: int) -> None:
        from textclf.torchserve.grpc_client import TorchServeGrpcClient

        ep = self.endpoints
        client = TorchServeGrpcClient(ep.grpc_inference, ep.grpc_management, ep.key_file, timeout=LIMIT_S,
                                      retries=self.retries, backoff_s=self.backoff_s, management_url=ep.management_url)
        self._loop(lambda text: client.predict(self.model, text), client.close)

    def _seen(self, r, *args, **kwargs) -> None:
        if r.status_code in (500, 503, 507):
            with self._lock:
                self.retried[r.status_code] += 1

    def wait_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + LIMIT_S
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; errors: {self.errors[:3]}"
            assert all(t.is_alive() for t in self._threads), "a client thread died"
            assert not self.errors, f"requests failed while waiting for {what}: {self.errors[:3]}"
            time.sleep(0.05)

    def wait_for_answers(self, n: int) -> None:
        """Until `n` more answers have arrived (so traffic flows at this point)."""
        target = len(self.labels) + n
        self.wait_until(lambda: len(self.labels) >= target, f"{n} more answers")
