"""docs/openapi.yaml: a valid OpenAPI 3.1 description, and every body the handler answers matches it (the live
layer checks a real TorchServe's answers against it too: tests/live/test_serving_features.py)."""
from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.test_handler import LABELS, body, make_handler
from tests.test_handler_requests import run
from training.tiny import make_tiny_bundle

SPEC = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
TEXTS = ["the film was a delight", "refund not showing up"]
V2 = {"id": "7", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS}]}


def spec() -> dict:
    return yaml.safe_load(SPEC.read_text())


def check(instance, schema: str) -> None:
    """Validate `instance` against components/schemas/`schema` of the spec; raises jsonschema.ValidationError."""
    registry = Registry().with_resource("openapi", Resource(spec(), specification=DRAFT202012))
    jsonschema.Draft202012Validator({"$ref": f"openapi#/components/schemas/{schema}"}, registry=registry
                                    ).validate(instance)


def request_schema(request: dict) -> str:
    return next(name for key, name in (("text", "TextRequest"), ("texts", "TextsRequest"),
                                       ("instances", "InstancesRequest"), ("inputs", "V2Request")) if key in request)


def check_answer(answer, status: int, explain: bool = False) -> None:
    """An answer against the 200 schema of its path (or Error), as the spec's paths declare them."""
    paths = spec()["paths"]
    path = paths["/explanations/{model}" if explain else "/predictions/{model}"]["post"]["responses"]
    schema = path[str(status)]
    if "$ref" in schema:  # a shared error response
        schema = spec()["components"]["responses"][schema["$ref"].rsplit("/", 1)[1]]
    doc = {**spec(), "x-answer": schema["content"]["application/json"]["schema"]}
    registry = Registry().with_resource("openapi", Resource(doc, specification=DRAFT202012))
    jsonschema.Draft202012Validator({"$ref": "openapi#/x-answer"}, registry=registry).validate(answer)


def test_the_spec_is_valid_openapi():
    from openapi_spec_validator import validate

    validate(spec())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("openapi")
    return {"single": make_tiny_bundle(root / "single", labels=LABELS, detector="mahalanobis"),
            "multi": make_tiny_bundle(root / "multi", labels=LABELS, thresholds=[0.5, 0.4, 0.6])}


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_every_answer_of_the_handler_matches_the_spec(bundles, kind):
    handler = make_handler(bundles[kind])
    requests = [TEXTS[0], {"text": TEXTS[0], "top_k": 1}, {"texts": TEXTS}, {"instances": [TEXTS[0], {"text": "x"}]},
                V2, {**V2, "outputs": [{"name": "label"}]}]
    for request in requests[1:]:
        check(request, request_schema(request))
    answers = run(handler, [body(r) for r in requests])
    assert [s for s, _ in answers] == [200] * len(requests)
    for status, answer in answers:
        check_answer(answer, status)
    explained = run(handler, [body(TEXTS[0]), body({"texts": TEXTS}), body({"instances": TEXTS, "label": "neutral"})],
                    explain={0, 1, 2})
    for status, answer in explained:
        assert status == 200
        check_answer(answer, status, explain=True)


def test_errors_match_the_spec_and_the_schemas_refuse_what_the_handler_refuses(bundles):
    handler = make_handler(bundles["single"])
    bad = [{"texts": []}, {"text": 3}, {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": ["a"]}]},
           {"texts": ["a"] * 65}, {"text": "a", "topk": 2}]
    answers = run(handler, [body(b) for b in bad])
    assert [s for s, _ in answers] == [400, 400, 400, 413, 400]
    for (status, answer), request in zip(answers, bad, strict=True):
        check_answer(answer, status)
        with pytest.raises(jsonschema.ValidationError):
            check_answer(answer, 200)
        with pytest.raises(jsonschema.ValidationError):
            check(request, request_schema(request))
