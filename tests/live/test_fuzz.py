"""A bounded fuzz run against a real TorchServe: generated bodies and content types on the session model; every
request gets a 200 or a 4xx with a JSON error body, never a 5xx, and no worker restarts (in-process fuzzing of
the same path, with many more cases: tests/test_parsing_fuzz.py)."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.live.conftest import NAME, V1_LABELS
from tests.test_parsing_fuzz import assert_answer, bodies

pytestmark = pytest.mark.live
LIVE_CASES = 150  # requests generated per run (the README's reliability figures quote it)
CONTENT_TYPES = ["application/json", "text/plain", "text/plain; charset=latin-1", "application/octet-stream",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/png", ""]


def encoded(value) -> bytes:
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else json.dumps(value, allow_nan=True)).encode("utf-8", "surrogatepass")


def worker_pids(live) -> list:
    return sorted(w["pid"] for w in live.rest.describe(NAME, "1.0")[0]["workers"])


@pytest.fixture(scope="module")
def before(live):
    return worker_pids(live)


@settings(max_examples=LIVE_CASES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bodies.map(encoded), st.sampled_from(CONTENT_TYPES))
def test_generated_requests_get_a_2xx_or_a_json_4xx(live, before, body, content_type):
    from textclf.torchserve.errors import TorchServeError

    try:
        answer = live.rest.post_prediction(NAME, body, content_type, version="1.0")
        assert_answer(answer, V1_LABELS)  # predictions of v1: its labels, scores in [0, 1], best first
    except TorchServeError as e:
        assert isinstance(e.status, int) and 400 <= e.status < 500, str(e)
        assert e.kind  # the handler's JSON error body names its type
    assert worker_pids(live) == before  # nothing crashed a worker
