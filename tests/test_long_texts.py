"""Long-text policies (handlers/long_texts.py): window splitting, head+tail, truncate as before, aggregation, the
card section; their use in training (TrainConfig, run.json, the card, predict_outputs); the long-ticket generator
(bench/long_tickets.py) and the benchmark's pure parts (bench/long_text_bench.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from handlers.bundle import MULTI, SINGLE, BundleError
from handlers.long_texts import (
    CARD_KEY,
    POLICIES,
    HeadTail,
    Truncate,
    Windows,
    policy_from_section,
    reduce_rows,
    window_starts,
)
from handlers.tokenization import encode

LONG = " ".join(f"my card {i} was declined at the shop" for i in range(30))  # far more than 32 tokens
SHORT = "why was my payment declined"
MAX_LENGTH = 32


@pytest.fixture(scope="module", params=["roberta", "distilbert"])
def tokenizer(request, tiny_roberta_dir, tiny_distilbert_dir):
    folder = tiny_roberta_dir if request.param == "roberta" else tiny_distilbert_dir
    return AutoTokenizer.from_pretrained(folder)


def content(tokenizer, row_ids, row_mask) -> list[int]:
    """A row's ids without padding and without the two special tokens around them."""
    ids = [i for i, m in zip(row_ids.tolist(), row_mask.tolist(), strict=True) if m]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    return ids[1:-1]


def bare(tokenizer, text) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


# ---------------------------------------------------------------- encoding

def test_truncate_gives_exactly_the_shared_encode(tokenizer):
    texts = [SHORT, LONG, "", "ok"]
    enc, got = encode(tokenizer, texts, MAX_LENGTH), Truncate().encode(tokenizer, texts, MAX_LENGTH)
    assert torch.equal(got.input_ids, enc["input_ids"]) and torch.equal(got.attention_mask, enc["attention_mask"])
    assert got.owners.tolist() == [0, 1, 2, 3] and got.windows == [1, 1, 1, 1]


@pytest.mark.parametrize("policy", [HeadTail(), Windows(8)], ids=["head+tail", "windows"])
def test_every_policy_reads_a_text_that_fits_as_truncate_does(tokenizer, policy):
    texts = [SHORT, "", "the film was a delight"]
    enc, got = encode(tokenizer, texts, MAX_LENGTH), policy.encode(tokenizer, texts, MAX_LENGTH)
    assert torch.equal(got.input_ids, enc["input_ids"]) and torch.equal(got.attention_mask, enc["attention_mask"])
    assert got.input_ids.dtype == got.attention_mask.dtype == got.owners.dtype == torch.int64


@pytest.mark.parametrize("stride", [1, 7, 15, 30, 100])
def test_windows_cover_every_token_with_specials_in_each(tokenizer, stride):
    ids = bare(tokenizer, LONG)
    budget = MAX_LENGTH - 2
    got = Windows(stride).encode(tokenizer, [SHORT, LONG], MAX_LENGTH)
    step = min(stride, budget)
    assert got.windows == [1, 1 + math.ceil((len(ids) - budget) / step)]
    assert got.owners.tolist() == [0] + [1] * got.windows[1] and got.input_ids.shape == (sum(got.windows), MAX_LENGTH)
    windows = [content(tokenizer, got.input_ids[r], got.attention_mask[r]) for r in range(1, len(got.owners))]
    starts = window_starts(len(ids), budget, step)
    assert [w for w in windows] == [ids[s: s + budget] for s in starts]
    assert all(len(w) == budget for w in windows)  # the last window is moved back, never a fragment
    assert starts[-1] + budget == len(ids) and set().union(*(range(s, s + budget) for s in starts)) == set(range(len(ids)))
    assert all(b - a == step for a, b in zip(starts[:-1], starts[1:-1], strict=False))  # `stride` apart


def test_windows_pad_on_the_right_with_the_pad_id(tokenizer):
    got = Windows(16).encode(tokenizer, [LONG, SHORT], MAX_LENGTH)
    last = got.input_ids[-1]  # SHORT's only row
    length = int(got.attention_mask[-1].sum())
    assert got.attention_mask[-1].tolist() == [1] * length + [0] * (MAX_LENGTH - length)
    assert set(last[length:].tolist()) == {tokenizer.pad_token_id}


def test_window_starts():
    assert window_starts(0, 10, 5) == [0] and window_starts(10, 10, 5) == [0]
    assert window_starts(11, 10, 5) == [0, 1] and window_starts(23, 10, 5) == [0, 5, 10, 13]


@pytest.mark.parametrize("head", [0.25, 0.5, 0.0, 1.0])
def test_head_and_tail_keep_the_start_and_the_end(tokenizer, head):
    ids, budget = bare(tokenizer, LONG), MAX_LENGTH - 2
    got = HeadTail(head).encode(tokenizer, [LONG, SHORT], MAX_LENGTH)
    first = round(budget * head)
    assert content(tokenizer, got.input_ids[0], got.attention_mask[0]) == ids[:first] + ids[len(ids) - budget + first:]
    assert content(tokenizer, got.input_ids[1], got.attention_mask[1]) == bare(tokenizer, SHORT)
    assert got.windows == [1, 1] and got.input_ids.shape[1] == MAX_LENGTH


def test_rows_of_picks_renumbers_and_drops_unused_padding(tokenizer):
    got = Windows(16).encode(tokenizer, [LONG, SHORT, "ok", LONG], MAX_LENGTH)
    sub = got.rows_of([2, 1])
    assert sub.owners.tolist() == [0, 1] and sub.windows == [1, 1]
    width = int(got.attention_mask[got.owners == 1].sum())  # SHORT is longer than "ok"
    assert sub.input_ids.shape == (2, width) and sub.attention_mask[1].all()
    assert torch.equal(sub.input_ids[1], got.input_ids[got.owners == 1][0, :width])
    both = got.rows_of([3, 0])
    assert both.owners.tolist() == [0] * got.windows[3] + [1] * got.windows[0] and both.windows == got.windows[:1] * 2
    assert torch.equal(both.input_ids, torch.cat([got.input_ids[got.owners == 3], got.input_ids[got.owners == 0]]))
    assert got.rows_of([]).input_ids.shape[0] == 0


# ---------------------------------------------------------------- aggregation

def test_reduce_rows_mean_and_max_per_text():
    rows = torch.tensor([[1.0, 4.0], [3.0, 0.0], [5.0, 5.0], [-1.0, 2.0]])
    owners = torch.tensor([0, 0, 1, 2])
    assert reduce_rows(rows, owners, 3, "mean").tolist() == [[2.0, 2.0], [5.0, 5.0], [-1.0, 2.0]]
    assert reduce_rows(rows, owners, 3, "max").tolist() == [[3.0, 4.0], [5.0, 5.0], [-1.0, 2.0]]
    assert reduce_rows(torch.tensor([0.2, 0.9, 0.4]), torch.tensor([0, 0, 1]), 2, "max").tolist() == pytest.approx(
        [0.9, 0.4])  # the handler's per-window in_scope scores
    with pytest.raises(ValueError, match="mean, max"):
        reduce_rows(rows, owners, 3, "median")


def test_one_row_per_text_is_the_rows_themselves_bit_for_bit():
    rows = torch.randn(5, 3, dtype=torch.float64)
    for how in ("mean", "max"):
        assert torch.equal(reduce_rows(rows, torch.arange(5), 5, how), rows)
    assert torch.equal(reduce_rows(rows, torch.tensor([4, 3, 2, 1, 0]), 5, "mean"), rows.flip(0))
    for policy in (Truncate(), HeadTail()):
        assert torch.equal(policy.aggregate(rows, torch.arange(5), 5), rows)


def test_window_aggregates():
    rows = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 6.0]])
    owners = torch.tensor([0, 0, 1])
    assert Windows(8, "mean").aggregate(rows, owners, 2).tolist() == [[1.0, 0.5, 0.25], [0.0, 0.0, 6.0]]
    assert Windows(8, "max").aggregate(rows, owners, 2).tolist() == [[2.0, 1.0, 0.5], [0.0, 0.0, 6.0]]
    # confident: the first window's top probability (softmax of 2, 0, 0) is higher than the second's
    assert Windows(8, "confident").aggregate(rows, owners, 2).tolist() == [[2.0, 0.0, 0.0], [0.0, 0.0, 6.0]]


# ---------------------------------------------------------------- the card section

def test_sections_round_trip():
    for policy in (Truncate(), HeadTail(0.4), Windows(64, "max"), Windows(10, "confident")):
        again = policy_from_section(policy.section(), SINGLE, "card")
        assert again.section() == policy.section() and again.name in POLICIES
    assert isinstance(policy_from_section(None, SINGLE, "card"), Truncate)
    assert isinstance(policy_from_section({}, MULTI, "card"), Truncate)
    assert policy_from_section({"policy": "windows", "stride": 8}, SINGLE, "card").section()["aggregate"] == "max"
    assert policy_from_section({"policy": "windows", "stride": 8}, MULTI, "card").section()["aggregate"] == "max"
    assert policy_from_section({"policy": "head+tail"}, SINGLE, "card").section() == {"policy": "head+tail", "head": 0.25}


@pytest.mark.parametrize("section, message", [
    ("windows", "must be an object"),
    ({"policy": "sliding"}, "policy 'sliding' is not served"),
    ({"stride": 8}, "policy None is not served"),
    ({"policy": "windows"}, "stride of at least 1"),
    ({"policy": "windows", "stride": 0}, "stride of at least 1"),
    ({"policy": "windows", "stride": True}, "stride of at least 1"),
    ({"policy": "windows", "stride": "64"}, "stride of at least 1"),
    ({"policy": "windows", "stride": 8, "aggregate": "median"}, "aggregate 'median' is not served"),
    ({"policy": "windows", "stride": 8, "strides": 8}, "does not take strides"),
    ({"policy": "truncate", "stride": 8}, "does not take stride"),
    ({"policy": "head+tail", "head": 1.5}, "head must be a share"),
])
def test_a_bad_section_is_one_clear_line(section, message):
    with pytest.raises(BundleError, match=message) as caught:
        policy_from_section(section, SINGLE, "bundle/model_card.json")
    assert str(caught.value).startswith(f"bundle/model_card.json: {CARD_KEY}") and "\n" not in str(caught.value)


def test_confident_is_single_label_only():
    with pytest.raises(BundleError, match="not served for multi_label_classification"):
        policy_from_section({"policy": "windows", "stride": 8, "aggregate": "confident"}, MULTI, "card")


# ---------------------------------------------------------------- training

@pytest.fixture(scope="module")
def tiny_classifier(tiny_roberta_dir):
    from transformers import AutoModelForSequenceClassification

    from training.features import with_features

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta_dir, num_labels=3).eval()
    return with_features(model), AutoTokenizer.from_pretrained(tiny_roberta_dir)


def test_predict_outputs_without_a_policy_is_truncate_as_before(tiny_classifier):
    from handlers.answers import softmax
    from training.report import predict_outputs

    forward, tokenizer = tiny_classifier
    texts = [LONG, SHORT, "ok", LONG[:90]]
    probs, features = predict_outputs(forward, tokenizer, texts, MAX_LENGTH, 2)
    again = predict_outputs(forward, tokenizer, texts, MAX_LENGTH, 2, policy=Truncate())
    assert np.array_equal(probs, again[0]) and np.array_equal(features, again[1])
    for i, text in enumerate(texts):  # one text at a time through the shared encode, as before policies
        enc = encode(tokenizer, [text], MAX_LENGTH)
        with torch.inference_mode():
            logits, feats = forward(enc["input_ids"], enc["attention_mask"])
        assert np.allclose(probs[i], softmax(logits)[0].numpy(), atol=1e-6)
        assert np.allclose(features[i], feats[0].numpy(), atol=1e-5)


@pytest.mark.parametrize("aggregate", ["mean", "max", "confident"])
def test_predict_outputs_aggregates_each_texts_windows(tiny_classifier, aggregate):
    from handlers.answers import softmax
    from training.report import predict_outputs, predict_probs

    forward, tokenizer = tiny_classifier
    policy = Windows(10, aggregate)
    texts = [SHORT, LONG, "ok", LONG[40:]]
    probs, features = predict_outputs(forward, tokenizer, texts, MAX_LENGTH, 3, policy=policy)
    assert np.array_equal(probs, predict_probs(forward, tokenizer, texts, MAX_LENGTH, 3, policy=policy))
    for i, text in enumerate(texts):  # each text alone: its windows' logits reduced, its features averaged
        enc = policy.encode(tokenizer, [text], MAX_LENGTH)
        with torch.inference_mode():
            logits, feats = forward(enc.input_ids, enc.attention_mask)
        expected = policy.aggregate(logits, enc.owners, 1)
        assert np.allclose(probs[i], softmax(expected)[0].numpy(), atol=1e-5)
        assert np.allclose(features[i], feats.mean(dim=0).numpy(), atol=1e-5)
    assert policy.encode(tokenizer, [LONG], MAX_LENGTH).windows[0] > 1


def test_train_config_checks_the_long_text_options():
    from textclf.core.errors import UserError
    from training.train import TrainConfig, long_text_policy

    config = TrainConfig(output_dir="x")
    assert config.long_texts == "truncate" and long_text_policy(config, SINGLE).section() == {"policy": "truncate"}
    windows = TrainConfig(output_dir="x", long_texts="windows", max_length=64)
    assert long_text_policy(windows, SINGLE).section() == {"policy": "windows", "stride": 32, "aggregate": "max"}
    assert long_text_policy(windows, MULTI).section()["aggregate"] == "max"
    assert long_text_policy(TrainConfig(output_dir="x", long_texts="head+tail"), SINGLE).section()["head"] == 0.25
    assert long_text_policy(TrainConfig(output_dir="x", long_texts="windows", window_stride=5), SINGLE).stride == 5
    for bad, message in [({"long_texts": "sliding"}, "--long-texts must be one of"),
                         ({"window_stride": 16}, "--window-stride is for --long-texts windows"),
                         ({"long_texts": "windows", "window_stride": 0}, "from 1 to --max-length - 1"),
                         ({"long_texts": "windows", "window_stride": 128}, "from 1 to --max-length - 1")]:
        with pytest.raises(UserError, match=message):
            TrainConfig(output_dir="x", **bad)


def test_the_command_line_takes_the_policy():
    from textclf.core.options import parse_config
    from training.train import TrainConfig

    config = parse_config(TrainConfig, ["--output-dir", "x", "--long-texts", "head+tail"])
    assert config.long_texts == "head+tail"
    config = parse_config(TrainConfig, ["--output-dir", "x", "--long-texts", "windows", "--window-stride", "48"])
    assert (config.long_texts, config.window_stride) == ("windows", 48)


def test_a_windows_run_evaluates_with_its_policy_and_carries_it_to_the_card(tmp_path, tiny_roberta_dir, monkeypatch):
    from handlers import bundle
    from tests.tiny_runs import one_torch_thread, roberta_config, write_string_data
    from training.bundle_writer import build_card
    from training.rundir import RunDir
    from training.train import main

    seen = []
    original = Windows.encode
    monkeypatch.setattr(Windows, "encode", lambda self, tok, texts, n: seen.append(len(texts)) or original(self, tok, texts, n))
    # max_length 8: every tiny text needs two or three windows, in validation, test and the detector's fit.
    with one_torch_thread():
        main(roberta_config(tmp_path / "run", write_string_data(tmp_path / "data"), tiny_roberta_dir, max_length=8,
                            long_texts="windows", window_stride=3))
    run = RunDir(tmp_path / "run").read_run()
    assert run[CARD_KEY] == {"policy": "windows", "stride": 3, "aggregate": "max"} and run["out_of_scope"]
    assert sum(seen) >= 30 + 12  # the training texts (detector fit) and the test texts at least
    card = build_card(run, tmp_path / "run", {}, fmt="torchscript", quantize="none", dtype="fp32", variant="fp32")
    assert card[CARD_KEY] == run[CARD_KEY]
    assert CARD_KEY not in build_card({k: v for k, v in run.items() if k != CARD_KEY}, tmp_path / "run", {},
                                      fmt="torchscript", quantize="none", dtype="fp32", variant="fp32")
    assert bundle.read_json(RunDir(tmp_path / "run").metrics_file)["test"]["samples"] == 12


def test_a_tiny_bundle_carries_the_section_serving_reads(tmp_path):
    from handlers import bundle
    from training.tiny import make_tiny_bundle

    section = {"policy": "windows", "stride": 16, "aggregate": "max"}
    card = bundle.check(make_tiny_bundle(tmp_path / "b", long_texts=section))
    assert card.raw[CARD_KEY] == section
    assert policy_from_section(card.raw.get(CARD_KEY), card.problem_type, "card").section() == section
    plain = bundle.check(make_tiny_bundle(tmp_path / "plain"))
    assert CARD_KEY not in plain.raw and isinstance(policy_from_section(plain.raw.get(CARD_KEY), SINGLE, "c"), Truncate)


# ---------------------------------------------------------------- the long-ticket set

def synthetic_queries(n_categories: int = 6, per_category: int = 15):
    """Queries with a unique marker word each, so a test can find them in a ticket."""
    import pandas as pd

    rows = [(f"how do I sort out problem q{c}x{i} with my account?", f"intent_{c}")
            for c in range(n_categories) for i in range(per_category)]
    return pd.DataFrame(rows, columns=["text", "category"])


def test_long_tickets_are_seeded_and_place_each_query_as_recorded():
    from bench.long_tickets import EMAIL_TOKENS, MIDDLE, POSITIONS, count_words, long_tickets

    queries = synthetic_queries()
    tickets = long_tickets(queries, 60, seed=3)
    assert tickets == long_tickets(queries, 60, seed=3) and tickets != long_tickets(queries, 60, seed=4)
    assert [sum(t.position == p for t in tickets) for p in POSITIONS] == [20, 20, 20]
    assert len({t.query for t in tickets}) == 60  # each query once at most
    share = {p: [] for p in POSITIONS}
    for t in tickets:
        assert t.text.count(t.query[-30:]) == 1 and t.quoted_category != t.category
        assert EMAIL_TOKENS[0] <= count_words(t.text) - count_words(t.query) <= EMAIL_TOKENS[1]
        # the quoted message: another intent's query, on lines quoted with '>'
        quoted = [line for line in t.text.splitlines() if line.startswith(">")]
        assert any(f"intent_{t.quoted_category[-1]}" and f"q{t.quoted_category[-1]}x" in line for line in quoted)
        start = t.text.index(t.query[-30:])
        share[t.position].append(count_words(t.text[:start]) / count_words(t.text))
    assert max(share["start"]) < 0.15
    assert all(MIDDLE[0] - 0.05 <= s <= MIDDLE[1] + 0.05 for s in share["middle"])
    assert min(share["end"]) > 0.4 and sorted(share["end"])[len(share["end"]) // 2] > 0.8


def test_long_tickets_count_tokens_with_the_given_counter(tiny_distilbert_dir):
    from bench.long_tickets import long_tickets, token_counter

    count = token_counter(str(tiny_distilbert_dir))
    # The tiny tokenizer's 300 pieces split words into several: a signature with a disclaimer alone is ~250 of them.
    for t in long_tickets(synthetic_queries(), 12, seed=5, count=count, tokens=(400, 700)):
        assert 400 <= count(t.text) - count(t.query) <= 700


def test_long_tickets_refuse_impossible_requests():
    from bench.long_tickets import long_tickets

    with pytest.raises(ValueError, match="at least two categories"):
        long_tickets(synthetic_queries(1), 5, seed=0)
    with pytest.raises(ValueError, match="rows must be from 1 to the 90 queries"):
        long_tickets(synthetic_queries(), 91, seed=0)


def test_without_quotes_keeps_the_reply_alone():
    from bench.long_tickets import long_tickets, without_quotes

    for t in long_tickets(synthetic_queries(), 30, seed=9):
        kept = without_quotes(t.text)
        assert t.query in kept and f"q{t.quoted_category[-1]}x" not in kept.replace(t.query, "")
        assert "wrote:" not in kept and "Original Message" not in kept and not kept.startswith("\n")


def test_the_command_writes_the_set_from_the_data_folder(tmp_path):
    import pandas as pd

    from bench.long_tickets import command

    (tmp_path / "banking77").mkdir()
    synthetic_queries().to_csv(tmp_path / "banking77" / "test.csv", index=False)
    out = tmp_path / "runs" / "tickets.csv"
    assert command(["--data-root", str(tmp_path), "--rows", "9", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["text", "category", "position", "quoted_category", "query"] and len(frame) == 9
    assert command(["--data-root", str(tmp_path / "nowhere"), "--out", str(out)]) == 2  # one line, no traceback


def test_real_banking77_tickets(tmp_path):
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "banking77" / "test.csv").is_file():
        pytest.skip(f"banking77 not found at {SHARED_DATA}: the real long-ticket set cannot be built in a fresh clone")
    from bench.long_tickets import banking77_test, long_tickets

    queries = banking77_test(SHARED_DATA)
    tickets = long_tickets(queries, 30, seed=13)
    assert {t.category for t in tickets} <= set(queries["category"]) and all(t.query[1:] in t.text for t in tickets)


# ---------------------------------------------------------------- the benchmark's pure parts

def test_the_bench_candidates_are_served_sections():
    from bench.long_text_bench import candidates

    sections = candidates(128)
    assert sections["truncate"] == {"policy": "truncate"} and "windows 64, max" in sections and "windows 32, max" in sections
    for section in sections.values():
        assert policy_from_section(section, SINGLE, "bench").section() == section


def test_the_bench_scores_by_position_and_quoted_intent():
    import pandas as pd

    from bench.long_text_bench import best_aggregate, scores

    tickets = pd.DataFrame({"category": ["a", "b", "c", "a"], "position": ["start", "start", "end", "middle"],
                            "quoted_category": ["b", "c", "a", "c"]})
    got = scores(np.array(["a", "c", "c", "b"], dtype=object), tickets)
    assert got == {"accuracy": 0.5, "by_position": {"start": 0.5, "middle": 0.0, "end": 1.0}, "quoted_intent": 0.25}
    policies = {"truncate": {"section": {"policy": "truncate"}, "accuracy": 0.9},
                "w mean": {"section": {"policy": "windows"}, "accuracy": 0.3},
                "w max": {"section": {"policy": "windows"}, "accuracy": 0.5}}
    assert best_aggregate(policies) == "w max"


def test_the_bench_report_has_every_table():
    from bench.long_text_bench import markdown

    row = {"accuracy": 0.5, "by_position": {"start": 0.8, "middle": 0.4, "end": 0.3}, "quoted_intent": 0.2}
    results = {
        "command": "python -m bench.long_text_bench", "date": "2026-12-04", "torch_threads": 1,
        "machine": {"cpu_class": "amx", "cpus": 2}, "load_average_end": [1.5, 1.0, 1.0], "model": "embedded",
        "max_length": 128, "temperature": 0.65, "short_texts": 3080, "cost_texts": 256,
        "set": {"rows": 1200, "seed": 13, "email_tokens": [150, 400], "text_tokens": {"min": 160, "median": 300, "max": 420}},
        "policies": {"windows 64, max": {**row, "short_accuracy": 0.91, "windows_per_text": 4.4, "windows_max": 7,
                                         "ms_per_text": 90.0, "texts_per_second": 11.1, "section": {}}},
        "best_windows": "windows 64, max", "references": {"the queries alone": row},
        "detector": "mahalanobis", "out_of_scope": {"truncate": {"serving": 0.4, "training": 0.4}},
    }
    text = markdown(results)
    assert "`python -m bench.long_text_bench` on amx (2 CPUs, 1 torch thread)" in text
    assert "| windows 64, max | 50.0% | 80.0% | 40.0% | 30.0% | 20.0% | 91.0% | 4.40 (7) | 90.0 | 11.1 |" in text
    assert "| the queries alone | 50.0% | 80.0% | 40.0% | 30.0% | 20.0% |" in text
    assert "| truncate | 40.0% | 40.0% |" in text and "best of 3 passes over 256 tickets" in text


def test_the_bench_says_in_one_line_that_the_data_is_missing(tmp_path):
    from bench.long_text_bench import command

    assert command(["--data-root", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
