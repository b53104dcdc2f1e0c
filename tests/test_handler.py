"""The TorchServe handler run in-process on a tiny bundle, through BaseHandler.handle with a real ts Context."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from handlers.bundle import BundleError, read_json, write_metadata
from handlers.config import HandlerConfig, HandlerConfigError, parse_chunk_size
from handlers.device import choose_device, cpu_only_warning, slow_bf16_warning
from training.tiny import make_tiny_bundle

LABELS = ("negative", "neutral", "positive")


class _Metrics:
    """BaseHandler.handle records HandlerTime; the timer decorator records per-stage times when profiling."""

    def __init__(self):
        self.times = []

    def add_time(self, name, value, *args, **kwargs):
        self.times.append(name)


def make_context(model_dir, model_yaml_config=None):
    from ts.context import Context

    manifest = {"model": {"modelName": "tiny", "serializedFile": "model.pt", "handler": "text_classifier.py"}}
    return Context("tiny", str(model_dir), manifest, 16, None, "0.12.0", metrics=_Metrics(),
                   model_yaml_config={} if model_yaml_config is None else model_yaml_config)


def make_handler(model_dir, handler_options=None):
    from handlers.text_classifier import TextClassifierHandler

    handler = TextClassifierHandler()
    handler.initialize(make_context(model_dir, {"handler": handler_options or {}}))
    return handler


def run(handler, rows):
    """Send one TorchServe batch; return [(status, content type, parsed body)] per request."""
    from ts.context import RequestProcessor

    ctx = make_context("", {})
    ctx.request_processor = [RequestProcessor({}) for _ in rows]
    out = handler.handle(rows, ctx)
    assert isinstance(out, list) and len(out) == len(rows)
    return [(ctx.get_response_status(i)[0], ctx.get_response_content_type(i), json.loads(body))
            for i, body in enumerate(out)]


def body(value):
    return {"body": value}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "export", labels=LABELS)


@pytest.fixture(scope="module")
def handler(bundle):
    return make_handler(bundle)


def batch_by_hand(tokenizer, texts, max_length=64):
    """The model's inputs for `texts` built without handlers.tokenization: each text's ids from the tokenizer
    alone, cut by hand to max_length (the first max_length - 1 ids and the closing special token), right-padded
    with the pad id to the longest and masked; so a tokenisation bug in the handler fails the tests below."""
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"]
        rows.append(ids if len(ids) <= max_length else ids[: max_length - 1] + ids[-1:])
    width = max(map(len, rows))
    input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in rows])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in rows])
    return input_ids, mask


@pytest.fixture(scope="module")
def direct(bundle):
    """Probabilities from the traced model itself on the same batch of texts, built by hand (batch_by_hand);
    `temperature` divides the logits as a calibrated bundle's does."""
    from transformers import AutoTokenizer

    model = torch.jit.load(str(bundle / "model.pt"))
    tokenizer = AutoTokenizer.from_pretrained(bundle)

    def probs(texts, temperature=1.0):
        with torch.inference_mode():
            return torch.softmax(model(*batch_by_hand(tokenizer, texts)) / temperature, dim=-1).tolist()

    return probs


def test_the_hand_built_batch_is_what_the_tokenizer_makes(bundle):
    """The reference above, checked against known ids: <s> ... </s>, pad 1, the cut keeping </s>."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundle)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    assert (bos, eos, pad) == (0, 2, 1)  # RoBERTa's
    ids, mask = batch_by_hand(tokenizer, ["why", "the film was a delight " * 40])
    assert ids.shape == mask.shape == (2, 64)
    length = int(mask[0].sum())
    assert ids[0, 0] == bos and ids[0, length - 1] == eos and set(ids[0, length:].tolist()) == {pad}
    assert mask[1].tolist() == [1] * 64 and ids[1, 0] == bos and ids[1, 63] == eos


def assert_matches(pred, probs, top_k=None):
    ranked = sorted(zip(LABELS, probs, strict=False), key=lambda pair: pair[1], reverse=True)[: top_k or len(LABELS)]
    assert list(pred["scores"]) == [name for name, _ in ranked]
    assert list(pred["scores"].values()) == pytest.approx([p for _, p in ranked], abs=1e-6)
    assert (pred["label"], pred["score"]) == (ranked[0][0], pytest.approx(ranked[0][1], abs=1e-6))


def test_choose_device():
    assert choose_device(False, None) == "cpu"
    assert choose_device(False, 0) == "cpu"
    assert choose_device(True, None) == "cpu"
    assert choose_device(True, 0) == "cuda:0"
    assert choose_device(True, 3) == "cuda:3"
    assert choose_device(True, 0, "bf16") == "cuda:0"
    assert choose_device(True, 0, "int8") == "cpu"  # dynamic int8 Linear has CPU kernels only


def test_bundle_exported_before_the_device_fix_is_made_device_agnostic_on_load(tmp_path, monkeypatch):
    from handlers.torchscript import fixed_devices
    from training import export_formats

    monkeypatch.setattr(export_formats, "follow_input_device", lambda traced: traced)  # export as it was before
    old = make_tiny_bundle(tmp_path / "old", labels=LABELS)
    assert fixed_devices(torch.jit.load(str(old / "model.pt")).graph)  # pinned to the CPU it was traced on
    assert fixed_devices(make_handler(old).scorer.model.graph) == []


def test_cpu_only_warning_names_the_idle_gpu():
    assert "GPU 1" in cpu_only_warning("int8", 1, cuda_available=True)
    assert cpu_only_warning("int8", None, cuda_available=True) is None
    assert cpu_only_warning("int8", 0, cuda_available=False) is None
    assert cpu_only_warning("fp32", 0, cuda_available=True) is None


def test_slow_bf16_warning_only_for_bf16_on_a_cpu_without_bf16():
    assert "no AVX512-BF16 or AMX" in slow_bf16_warning("bf16", "cpu", has_bf16=False)
    assert slow_bf16_warning("bf16", "cpu", has_bf16=True) is None
    assert slow_bf16_warning("bf16", "cuda:0", has_bf16=False) is None
    assert slow_bf16_warning("fp32", "cpu", has_bf16=False) is None
    assert slow_bf16_warning("int8", "cpu", has_bf16=False) is None


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bf16_bundle_on_a_cpu_without_bf16_is_served_with_a_warning(bundle, tmp_path, monkeypatch, caplog, has_bf16):
    import handlers.text_classifier as module

    copy = shutil.copytree(bundle, tmp_path / "bundle")
    card = read_json(copy / "model_card.json")
    write_metadata(copy, list(LABELS), {**card, "variant": "bf16"})
    monkeypatch.setattr(module, "cpu_has_bf16", lambda: has_bf16)
    with caplog.at_level(logging.WARNING, logger=module.__name__):
        handler = make_handler(copy)
    assert run(handler, [body("still answered")])[0][0] == 200
    assert ("without bf16 instructions" in caplog.text) is not has_bf16


def test_chunk_size_auto_follows_the_variant_on_cpu():
    auto = HandlerConfig()
    assert auto.chunk_size == "auto"
    assert [auto.resolve_chunk_size(v, "cpu") for v in ("fp32", "int8", "bf16")] == [4, 4, 16]
    assert auto.resolve_chunk_size("fp32", "cuda:0") is None  # one pass on a GPU
    assert HandlerConfig(chunk_size=8).resolve_chunk_size("bf16", "cpu") == 8
    assert HandlerConfig(chunk_size=None).resolve_chunk_size("fp32", "cpu") is None
    for bad in ("Auto", "8", 0, True):
        with pytest.raises(HandlerConfigError, match='chunk_size.*or "auto"'):
            HandlerConfig(chunk_size=bad)


def test_parse_chunk_size_from_a_command_line():
    assert [parse_chunk_size(t) for t in ("auto", "none", "1", "16")] == ["auto", None, 1, 16]
    for bad in ("0", "-4", "eight", "Auto", ""):
        with pytest.raises(ValueError, match="positive integer, 'auto' or 'none'"):
            parse_chunk_size(bad)


def test_handler_runs_the_resolved_chunk_size(bundle):
    assert make_handler(bundle).scorer.chunk_size == 4  # training.tiny writes an fp32 model
    assert make_handler(bundle, {"chunk_size": None}).scorer.chunk_size is None


def test_handler_config_validation_and_threads():
    assert HandlerConfig.from_model_yaml({}) == HandlerConfig()
    assert HandlerConfig.from_model_yaml({"handler": {"default_top_k": 2}}).default_top_k == 2
    for bad in ({"threds": 2}, {"threads": True}, {"threads": 0}, {"max_texts_per_request": "64"},
                {"default_top_k": 0}, {"max_length": 1}, {"profile": "yes"}):
        with pytest.raises(HandlerConfigError):
            HandlerConfig.from_model_yaml({"handler": bad})
    assert HandlerConfig().thread_count(workers=2, cpu_count=8) == 4
    assert HandlerConfig().thread_count(workers=4, cpu_count=2) == 1
    assert HandlerConfig(threads=3).thread_count(workers=4, cpu_count=2) == 3
    assert HandlerConfig().resolve_max_length(128) == 128
    assert HandlerConfig(max_length=32).resolve_max_length(128) == 32
    with pytest.raises(HandlerConfigError, match="exceeds"):
        HandlerConfig(max_length=256).resolve_max_length(128)


@pytest.mark.parametrize("row, texts, wrap", [
    (body("a dull, lifeless script"), ["a dull, lifeless script"], "one"),
    (body(b"a dull, lifeless script"), ["a dull, lifeless script"], "one"),
    ({"data": "my card has not arrived"}, ["my card has not arrived"], "one"),
    (body({"text": "terrible service"}), ["terrible service"], "one"),
    (body(b'{"text": "terrible service"}'), ["terrible service"], "one"),
    (body(bytearray(b'  {"texts": ["a", "b c"]}')), ["a", "b c"], "list"),
    (body({"texts": ["I love this phone", "refund now", "why declined"]}),
     ["I love this phone", "refund now", "why declined"], "list"),
    (body({"instances": ["an ordinary story", {"text": "top up"}]}), ["an ordinary story", "top up"], "predictions"),
])
def test_body_forms(handler, direct, row, texts, wrap):
    [(status, content_type, out)] = run(handler, [row])
    assert (status, content_type) == (200, "application/json")
    preds = {"one": lambda o: [o], "list": lambda o: o, "predictions": lambda o: o["predictions"]}[wrap](out)
    assert wrap != "predictions" or list(out) == ["predictions"]
    assert len(preds) == len(texts)
    for pred, probs in zip(preds, direct(texts), strict=True):
        assert_matches(pred, probs)


def test_batch_with_one_malformed_request(handler, direct):
    rows = [body("the film was a delight"), body({"texts": 5}), body({"texts": ["refund", "card", "top up"]}),
            body({"text": "how do I top up"})]
    results = run(handler, rows)
    assert [status for status, _, _ in results] == [200, 400, 200, 200]
    assert results[1][2] == {"error": "'texts' must be a list of strings, got a number", "type": "invalid_request"}
    # The valid texts of the batch were padded together: compare with the same batch run directly.
    expected = direct(["the film was a delight", "refund", "card", "top up", "how do I top up"])
    got = [results[0][2], *results[2][2], results[3][2]]
    for pred, probs in zip(got, expected, strict=True):
        assert_matches(pred, probs)
        assert sum(pred["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_one_tokenizer_call_and_forward_per_batch(bundle, monkeypatch):
    handler = make_handler(bundle, {"cache_size": 0})
    calls, forwards = [], []
    encode_batch, forward = handler.scorer.encode, handler.scorer.forward
    monkeypatch.setattr(handler.scorer, "encode", lambda texts: calls.append(list(texts)) or encode_batch(texts))
    monkeypatch.setattr(handler.scorer, "forward", lambda ids, mask: forwards.append(ids.shape) or forward(ids, mask))
    run(handler, [body("a"), body({"texts": ["b", "c"]}), body(""), body({"instances": ["d"]})])
    assert calls == [["a", "b", "c", "d"]] and [shape[0] for shape in forwards] == [4]


def test_only_invalid_requests(handler):
    results = run(handler, [body(""), body({"texts": []})])
    assert [(s, o) for s, _, o in results] == [(400, {"error": "body is empty", "type": "invalid_text"}),
                                               (400, {"error": "'texts' is empty", "type": "invalid_request"})]


@pytest.mark.parametrize("top_k, expected", [(1, 1), (2, 2), (3, 3), (10, 3)])
def test_top_k(handler, direct, top_k, expected):
    [(status, _, out)] = run(handler, [body({"texts": ["refund now", "lovely"], "top_k": top_k})])
    assert status == 200
    for pred, probs in zip(out, direct(["refund now", "lovely"]), strict=True):
        assert len(pred["scores"]) == expected
        assert_matches(pred, probs, top_k=expected)


@pytest.mark.parametrize("top_k", [0, -1, True, "2", 1.5])
def test_invalid_top_k(handler, top_k):
    [(status, _, out)] = run(handler, [body({"text": "hello", "top_k": top_k})])
    assert status == 400 and out["error"].startswith("'top_k' must be an integer >= 1, got ")
    assert out["type"] == "invalid_top_k"


def test_null_top_k_means_default(handler):
    [(status, _, out)] = run(handler, [body({"text": "hello", "top_k": None})])
    assert status == 200 and len(out["scores"]) == len(LABELS)


def test_default_top_k_from_model_config(bundle):
    handler = make_handler(bundle, {"default_top_k": 1})
    [(_, _, one), (_, _, two)] = run(handler, [body("hello"), body({"text": "hello", "top_k": 2})])
    assert len(one["scores"]) == 1 and len(two["scores"]) == 2


def test_limits(bundle):
    handler = make_handler(bundle, {"max_texts_per_request": 2})
    results = run(handler, [body({"texts": ["a", "b", "c"]}), body({"instances": ["a", "b", "c"]}),
                            body({"texts": ["a", "b"]})])
    assert [s for s, _, _ in results] == [413, 413, 200]
    assert results[0][2] == {"error": "'texts' has 3 entries; at most 2 per request", "type": "too_many_texts"}


def test_default_limit_is_64(handler):
    [(status, _, _), (ok, _, out)] = run(handler, [body({"texts": ["x"] * 65}), body({"texts": ["x"] * 64})])
    assert (status, ok, len(out)) == (413, 200, 64)


@pytest.mark.parametrize("raw, message, kind", [
    (b"\xff\xfe caf\xe9", "body is not valid UTF-8 (byte 0)", "invalid_encoding"),
    (b'{"text": "unterminated', "body is not valid JSON: Unterminated string", "invalid_json"),
    (b'[1, 2', "body is not valid JSON: Expecting", "invalid_json"),
])
def test_undecodable_bytes(handler, raw, message, kind):
    [(status, _, out)] = run(handler, [body(raw)])
    assert status == 400 and out["error"].startswith(message) and out["type"] == kind


@pytest.mark.parametrize("value, message, kind", [
    ("   \n", "body is empty", "invalid_text"),
    ({"text": " "}, "text is empty", "invalid_text"),
    ({"text": 3}, "text must be a string, got a number", "invalid_text"),
    ({"texts": ["ok", None]}, "texts[1] must be a string, got null", "invalid_text"),
    ({"texts": "one string"}, "'texts' must be a list of strings, got a string", "invalid_request"),
    ({"instances": [{"txt": "x"}]}, "instances[0] must be a string or an object with only 'text'", "invalid_request"),
    ({"instances": ["ok", ""]}, "instances[1] is empty", "invalid_text"),
    ({}, "JSON body needs exactly one of 'text', 'texts' or 'instances'", "invalid_request"),
    ({"text": "a", "texts": ["b"]}, "JSON body needs exactly one of 'text', 'texts' or 'instances', got ['text', 'texts']",
     "invalid_request"),
    ({"text": "a", "topk": 1}, "unknown field(s) ['topk']; allowed: ['text', 'texts', 'instances', 'top_k']",
     "invalid_request"),
    (["a", "b"], "JSON body must be an object with 'text', 'texts' or 'instances', got a list", "invalid_request"),
    (42, "JSON body must be an object with 'text', 'texts' or 'instances', got a number", "invalid_request"),
    (None, "JSON body must be an object with 'text', 'texts' or 'instances', got null", "invalid_request"),
])
def test_bad_requests(handler, value, message, kind):
    [(status, _, out)] = run(handler, [body(value)])
    assert (status, out) == (400, {"error": message, "type": kind})


def test_every_error_type_maps_to_one_status():
    from handlers.errors import PHRASES, ErrorType

    assert {t.code: t.status for t in ErrorType} == {
        "no_body": 400, "invalid_encoding": 400, "invalid_json": 400, "invalid_request": 400, "invalid_text": 400,
        "invalid_top_k": 400, "invalid_label": 400, "too_many_texts": 413, "too_many_windows": 413,
        "too_many_words": 413}
    assert all(t.status in PHRASES for t in ErrorType)


def test_many_label_models_answer_the_best_ten_scores_by_default(tmp_path):
    labels = [f"intent_{i:02d}" for i in range(12)]
    handler = make_handler(make_tiny_bundle(tmp_path / "many", labels=labels))
    [(_, _, default), (_, _, asked)] = run(handler, [body("hello"), body({"text": "hello", "top_k": 12})])
    assert len(default["scores"]) == 10 and len(asked["scores"]) == 12
    assert HandlerConfig().resolve_default_top_k(10) is None and HandlerConfig(default_top_k=3).resolve_default_top_k(77) == 3


def test_torchserve_decode_warnings_keep_one_line():
    from handlers.parsing import OneLineDecodeWarnings

    try:
        raise ValueError("Expecting value")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    ours = logging.LogRecord("root", logging.WARNING, "otf_message_handler.py", 1,
                             "Failed json decoding of input data. Forwarding encoded payload", None, exc_info)
    other = logging.LogRecord("root", logging.WARNING, "x.py", 1, "something else", None, exc_info)
    assert OneLineDecodeWarnings().filter(ours) and OneLineDecodeWarnings().filter(other)
    assert ours.exc_info is None and other.exc_info is exc_info


def test_row_without_body(handler):
    [(status, _, out)] = run(handler, [{"other": "x"}])
    assert status == 400 and out["error"].startswith("request has no body; send Content-Type: application/json")
    assert out["type"] == "no_body"


def test_one_megabyte_text_is_cut_and_answered(handler, direct, monkeypatch):
    lengths, encode_batch = [], handler.scorer.encode
    monkeypatch.setattr(handler.scorer, "encode", lambda texts: lengths.extend(map(len, texts)) or encode_batch(texts))
    huge = "the film was a delight " * 46_000  # ~1 MB
    [(status, _, out), (status_bytes, _, _)] = run(handler, [body({"text": huge}), body(huge.encode())])
    assert status == status_bytes == 200 and lengths == [100_000, 100_000]  # cut before tokenizing
    assert_matches(out, direct([huge[:100_000]])[0])


def test_order_preserved_across_requests(handler, direct):
    texts = [f"text number {i} " + "word " * i for i in range(12)]
    rows = [body(texts[0]), body({"texts": texts[1:6]}), body({"instances": texts[6:]})]
    results = run(handler, rows)
    got = [results[0][2], *results[1][2], *results[2][2]["predictions"]]
    for pred, probs in zip(got, direct(texts), strict=True):
        assert_matches(pred, probs)


def test_request_text_is_never_logged(handler, caplog):
    secret = "zq-secret-customer-text-42"
    with caplog.at_level(logging.DEBUG):
        run(handler, [body(secret), body({"texts": [secret, 7]}), body(secret.encode() + b"\xff")])
    assert caplog.records and secret not in caplog.text


def test_profile_option_records_stage_times(bundle):
    from ts.context import RequestProcessor

    handler = make_handler(bundle, {"profile": True})
    ctx = make_context(bundle, {"handler": {"profile": True}})
    ctx.request_processor = [RequestProcessor({})]
    handler.handle([body("hello")], ctx)
    assert {"ts_handler_preprocess", "ts_handler_inference", "ts_handler_postprocess"} <= set(ctx.metrics.times)


# --- refusing broken bundles -------------------------------------------------------------------------


@pytest.fixture
def broken(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def test_refuses_missing_label_map(broken):
    config = read_json(broken / "config.json")
    del config["id2label"], config["label2id"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="no id2label label map"):
        make_handler(broken)


def test_refuses_tampered_model(broken):
    with open(broken / "model.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="does not match the model card"):
        make_handler(broken)


def test_refuses_label_count_mismatch(broken):
    config = read_json(broken / "config.json")
    config["id2label"] = {"0": "negative", "1": "positive"}
    config["label2id"] = {"negative": 0, "positive": 1}
    (broken / "config.json").write_text(json.dumps(config))
    card = read_json(broken / "model_card.json")
    write_metadata(broken, ["negative", "positive"], {k: v for k, v in card.items() if k != "labels"})
    with pytest.raises(BundleError, match=r"outputs shape \(1, 3\) but the bundle has 2 labels"):
        make_handler(broken)


@pytest.mark.parametrize("missing", ["tokenizer.json", "tokenizer_config.json"])
def test_refuses_missing_tokenizer(broken, missing):
    (broken / missing).unlink()
    with pytest.raises(BundleError, match="tokenizer"):
        make_handler(broken)


def test_refuses_unknown_handler_option(bundle):
    with pytest.raises(HandlerConfigError, match="unknown handler option"):
        make_handler(bundle, {"max_batch": 8})


# ---- multi-label bundles: a sigmoid per label and a threshold per label -------------------------------------
MULTI_LABELS = ("billing", "card", "refund")


def sigmoid_probs(bundle_dir, texts):
    from transformers import AutoTokenizer

    model, tokenizer = torch.jit.load(str(bundle_dir / "model.pt")), AutoTokenizer.from_pretrained(bundle_dir)
    with torch.inference_mode():
        return torch.sigmoid(model(*batch_by_hand(tokenizer, texts))).tolist()


def set_thresholds(bundle_dir, thresholds) -> None:
    """config.json carries the thresholds (model.pt's hash does not cover it), as training writes them."""
    config = read_json(bundle_dir / "config.json")
    (bundle_dir / "config.json").write_text(json.dumps({**config, "label_thresholds": thresholds}))


def test_multi_label_answers_every_label_at_or_above_its_threshold(tmp_path):
    texts = ["my card has not arrived yet", "terrible service, I want a refund", "lovely"]
    bundle_dir = make_tiny_bundle(tmp_path / "multi", labels=MULTI_LABELS, thresholds=[0.5] * 3)
    probs = sigmoid_probs(bundle_dir, texts)
    # Per-label thresholds 0.1 below, above and below the first text's scores: it gets labels 0 and 2.
    thresholds = [probs[0][0] - 0.1, probs[0][1] + 0.1, probs[0][2] - 0.1]
    set_thresholds(bundle_dir, thresholds)
    handler = make_handler(bundle_dir)
    [(status, _, out)] = run(handler, [body({"texts": texts, "top_k": 1})])
    assert status == 200
    for answer, row in zip(out, probs, strict=True):
        expected = [name for p, t, name in sorted(zip(row, thresholds, MULTI_LABELS, strict=False), reverse=True) if p >= t]
        assert answer["labels"] == expected
        # `label`/`score`: the highest-scoring label (a near-tie may go either way).
        assert answer["score"] == pytest.approx(max(row), abs=1e-5)
        assert row[MULTI_LABELS.index(answer["label"])] == pytest.approx(max(row), abs=1e-5)
        assert len(answer["scores"]) == 1  # top_k limits scores, never the decision
    assert sorted(out[0]["labels"]) == ["billing", "refund"]


def test_multi_label_answer_may_be_empty(tmp_path):
    bundle_dir = make_tiny_bundle(tmp_path / "multi", labels=MULTI_LABELS, thresholds=[0.999] * 3)
    [(status, _, out)] = run(make_handler(bundle_dir), [body("no label reaches 0.999")])
    assert status == 200 and out["labels"] == [] and set(out["scores"]) == set(MULTI_LABELS)
    assert sum(out["scores"].values()) != pytest.approx(1.0, abs=1e-3)  # sigmoids, not a softmax


@pytest.mark.parametrize("thresholds, message", [([0.5, 0.5], "3 numbers between 0 and 1"),
                                                 ([0.5, 1.0, 0.5], "3 numbers between 0 and 1")])
def test_bad_thresholds_are_refused_at_load(tmp_path, thresholds, message):
    bundle_dir = make_tiny_bundle(tmp_path / "multi", labels=MULTI_LABELS, thresholds=[0.5] * 3)
    set_thresholds(bundle_dir, thresholds)
    with pytest.raises(BundleError, match=message):
        make_handler(bundle_dir)


def test_thresholds_round_trip_through_the_bundle(tmp_path):
    from handlers import bundle as bundle_module

    card = bundle_module.check(make_tiny_bundle(tmp_path / "multi", labels=MULTI_LABELS, thresholds=[0.3, 0.45, 0.7]))
    assert (card.problem_type, card.thresholds) == ("multi_label_classification", (0.3, 0.45, 0.7))
    assert bundle_module.check(make_tiny_bundle(tmp_path / "single")).problem_type == "single_label_classification"


def test_temperature_in_the_bundle_calibrates_the_scores_not_the_label(tmp_path, bundle, direct):
    """config.json's temperature divides the logits before the softmax: flatter scores, the same label."""
    copy = shutil.copytree(bundle, tmp_path / "calibrated")
    config = read_json(copy / "config.json")
    (copy / "config.json").write_text(json.dumps({**config, "calibration_temperature": 2.0}))
    [(status, _, out)] = run(make_handler(copy), [body("the film was a delight")])
    expected = direct(["the film was a delight"], temperature=2.0)[0]
    assert status == 200
    assert [out["scores"][name] for name in LABELS] == pytest.approx(expected, abs=1e-5)
    assert out["label"] == LABELS[max(range(len(LABELS)), key=lambda i: direct(["the film was a delight"])[0][i])]
    (copy / "config.json").write_text(json.dumps({**config, "calibration_temperature": 0}))
    with pytest.raises(BundleError, match="calibration_temperature must be a number from 0.05 to 20"):
        make_handler(copy)


# ---- runtimes: the same model as TorchScript and as ONNX answers alike ---------------------------------------

ROWS = [body({"text": "the film was a delight"}),
        body({"texts": ["a dull, lifeless script and wooden acting from everyone involved", "why"]}),
        body({"texts": 5}), body({"text": "my card has not arrived yet, what should I do about it"})]


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("onnx") / "export", labels=LABELS, runtime="onnxruntime")


def test_onnx_and_torchscript_bundles_of_one_model_answer_alike(handler, onnx_bundle):
    from handlers.onnx_runtime import OnnxModel

    onnx_handler = make_handler(onnx_bundle)
    assert isinstance(onnx_handler.scorer.model, OnnxModel) and str(onnx_handler.scorer.device) == "cpu"
    got, want = run(onnx_handler, ROWS), run(handler, ROWS)
    assert [status for status, _, _ in got] == [status for status, _, _ in want] == [200, 200, 400, 200]
    for (_, _, mine), (_, _, theirs) in zip(got, want, strict=True):
        if "error" in theirs:
            assert mine == theirs
            continue
        listed = [(x if isinstance(x, list) else [x]) for x in (mine, theirs)]
        for a, b in zip(*listed, strict=True):
            assert a["label"] == b["label"] and list(a["scores"]) == list(b["scores"])
            assert list(a["scores"].values()) == pytest.approx(list(b["scores"].values()), abs=1e-4)


def test_onnx_worker_threads_stop_spinning_when_a_run_returns(onnx_bundle):
    # Threads left spinning between requests take the cores TorchServe's frontend and the other workers need.
    from handlers.onnx_runtime import SPINNING_STOP

    options = make_handler(onnx_bundle).scorer.model.session.get_session_options()
    assert options.get_session_config_entry(SPINNING_STOP) == "1"
    assert options.inter_op_num_threads == 1


def test_onnx_worker_on_a_gpu_uses_cuda_only_when_onnxruntime_has_it(caplog):
    from handlers.onnx_runtime import CPU, CUDA, providers_for

    assert providers_for("cpu", [CUDA, CPU]) == ([CPU], "cpu")
    assert providers_for("cuda:1", [CUDA, CPU]) == ([(CUDA, {"device_id": 1}), CPU], "cuda:1")
    with caplog.at_level(logging.WARNING):
        assert providers_for("cuda:0", [CPU]) == ([CPU], "cpu")
    assert "install onnxruntime-gpu" in caplog.text


def test_refuses_a_runtime_it_does_not_serve(broken):
    card = read_json(broken / "model_card.json")
    card["runtime"] = "tensorrt"
    (broken / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="runtime 'tensorrt' is not served"):
        make_handler(broken)


def test_refuses_an_onnx_card_without_its_model_file(broken):
    card = read_json(broken / "model_card.json")
    card["runtime"] = "onnxruntime"  # the card says ONNX, but the folder holds model.pt
    (broken / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match=r"model\.onnx: missing from the bundle"):
        make_handler(broken)


def test_every_runtime_a_bundle_may_name_has_a_loader():
    import importlib

    from handlers.runtimes import RUNTIMES

    for runtime in RUNTIMES.values():
        assert callable(importlib.import_module(runtime.loader).load)
