"""Concurrent requests batched together (v1: batch_size 8, max_batch_delay 50 ms): a malformed one fails
alone with 400 and every other one gets its own 200 answer."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.live.conftest import NAME
from tests.live.test_rest import assert_prediction
from textclf.torchserve.errors import TorchServeError
from textclf.torchserve.rest import TorchServeClient

pytestmark = pytest.mark.live
N, BAD = 16, 7


def test_one_malformed_request_among_16_concurrent(live):
    ep = live.endpoints
    start = threading.Barrier(N)

    def call(i: int):
        client = TorchServeClient(ep.inference_url, ep.management_url, ep.key_file)  # one connection each
        body = b'{"texts": "not a list"}' if i == BAD else f'{{"texts": ["request {i}", "second text {i}"]}}'.encode()
        start.wait()
        try:
            return 200, client.post_prediction(NAME, body, "application/json")
        except TorchServeError as e:
            return e.status, e.message

    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(call, range(N)))
    assert results[BAD][0] == 400 and "'texts' must be a list" in results[BAD][1]
    for i, (status, answer) in enumerate(results):
        if i != BAD:
            assert status == 200, answer
            assert len(answer) == 2
            for p in answer:
                assert_prediction(p)
