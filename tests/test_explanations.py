"""Explanations by occlusion (handlers/explanations.py): words and their offsets, the occlusion operation, weights
with a scorer whose answer one word decides, single- and multi-label targets, a tiny real bundle end to end; the
`textclf explain` rendering (textclf/pipelines/explain.py) and the faithfulness bench's pure parts
(bench/explain_bench.py)."""
from __future__ import annotations

import io

import pytest
import torch

from bench import explain_bench as bench
from handlers.answers import MultiLabelAnswers, SingleLabelAnswers
from handlers.explanations import Word, explain, without, words_of
from handlers.scoring import Scorer
from textclf.core.files import write_atomically
from textclf.pipelines import explain as cli
from training.tiny import make_tiny_bundle

# ---------------------------------------------------------------------------------------------- words


def spans(text: str) -> list[tuple[str, int, int]]:
    words = words_of(text)
    assert all(text[w.start:w.end] == w.text for w in words)  # offsets index the original text
    return [(w.text, w.start, w.end) for w in words]


def test_words_are_letters_and_digits_with_inner_apostrophes_and_hyphens():
    assert spans("My refund isn't showing up!") == [("My", 0, 2), ("refund", 3, 9), ("isn't", 10, 15),
                                                     ("showing", 16, 23), ("up", 24, 26)]
    assert [w for w, _, _ in spans("a well-known e-mail, 'quoted' l’amour -dash- £3.50 1,000 ok_go")] == [
        "a", "well-known", "e-mail", "quoted", "l’amour", "dash", "3.50", "1,000", "ok", "go"]


def test_punctuation_symbols_and_emoji_are_not_words():
    assert spans("!!! ... -- 🙂 €") == []
    assert spans("") == []
    assert spans("great 🙂 film.") == [("great", 0, 5), ("film", 8, 12)]


def test_unicode_words_keep_their_accents_and_marks():
    decomposed = "cafe\u0301 nai\u0308ve"  # accents as combining marks
    assert [w for w, _, _ in spans(decomposed)] == ["cafe\u0301", "nai\u0308ve"]
    assert spans("Привет, мир") == [("Привет", 0, 6), ("мир", 8, 11)]
    assert [w for w, _, _ in spans("नमस्ते दुनिया")] == ["नमस्ते", "दुनिया"]  # vowel signs are marks


def test_without_removes_words_and_tidies_the_gap():
    text = "I want a refund now."
    words = words_of(text)
    assert [without(text, [w]) for w in words] == ["want a refund now.", "I a refund now.", "I want refund now.",
                                                    "I want a now.", "I want a refund."]
    assert without(text, words[1:3]) == "I refund now."
    assert without(text, [words[3], words[0]]) == "want a now."  # any order
    assert without(text, []) == text
    assert without(text, words) == "."


def test_without_keeps_line_breaks_and_the_texts_own_spacing():
    text = "first  line end\nsecond line"
    words = words_of(text)
    assert without(text, [words[2]]) == "first  line\nsecond line"
    assert without(text, [words[0]]) == "line end\nsecond line"
    assert "  " not in without("a b c", [words_of("a b c")[1]])


# ---------------------------------------------------------------------------------------------- explain

LABELS = ["other", "refund", "card"]


class Decider:
    """Probabilities as a model whose answer one word decides: "refund" -> refund, "card" -> card, else other;
    counts its calls and the texts it was given."""

    def __init__(self):
        self.calls, self.texts = 0, []

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        self.texts.append(list(texts))
        rows = []
        for text in texts:
            words = {w.text.lower() for w in words_of(text)}
            rows.append([0.1 + 0.8 * ("refund" not in words and "card" not in words),
                         0.1 + 0.8 * ("refund" in words), 0.1 + 0.8 * ("card" in words)])
        return torch.tensor(rows)


def test_the_deciding_word_gets_the_top_weight_in_one_call():
    decider = Decider()
    texts = ["where is my refund please", "hello there", "where is my refund please"]
    first, second, third = explain(texts, decider, SingleLabelAnswers(LABELS))
    assert decider.calls == 1
    assert len(decider.texts[0]) == 2 + 5 + 2  # each distinct text once: two originals and their variants
    assert first["label"] == "refund" and abs(first["score"] - 0.9) < 1e-6
    assert [a["text"] for a in first["attributions"]] == ["where", "is", "my", "refund", "please"]
    assert {a["text"]: a["weight"] for a in first["attributions"]} == {
        "where": 0.0, "is": 0.0, "my": 0.0, "refund": 0.8, "please": 0.0}
    assert first["attributions"][3] == {"text": "refund", "start": 12, "end": 18, "weight": 0.8}
    assert second["label"] == "other" and all(a["weight"] == 0 for a in second["attributions"])
    assert third == first


def test_a_named_label_is_explained_and_weights_can_be_negative():
    [answer] = explain(["my refund"], Decider(), SingleLabelAnswers(LABELS), label="other")
    assert answer["label"] == "other" and abs(answer["score"] - 0.1) < 1e-6
    assert [a["weight"] for a in answer["attributions"]] == [0.0, -0.8]  # without "refund" it is "other"


def test_a_text_without_words_has_no_attributions():
    decider = Decider()
    answers = explain(["?!", "", "card"], decider, SingleLabelAnswers(LABELS))
    assert [a["attributions"] for a in answers[:2]] == [[], []] and answers[0]["label"] == "other"
    assert answers[2]["attributions"][0]["weight"] == 0.8 and decider.calls == 1
    assert explain([], decider, SingleLabelAnswers(LABELS)) == [] and decider.calls == 1  # nothing scored


def test_weights_are_rounded_and_never_negative_zero():
    def probs(texts):  # removing a word raises the label's probability by 4e-6: a weight of -0.0 when rounded
        return torch.tensor([[0.5, 0.123456 if t == "a b" else 0.12346, 0.3] for t in texts])

    [answer] = explain(["a b"], probs, SingleLabelAnswers(LABELS), label="refund")
    assert [str(a["weight"]) for a in answer["attributions"]] == ["0.0", "0.0"]


def test_multi_label_explains_each_predicted_label_best_first():
    def both(texts):  # refund and card predicted for the first text, the card more strongly
        return torch.tensor([[0.1, 0.6 * ("refund" in t), 0.9 * ("card" in t)] for t in texts])

    [answer] = explain(["refund to my card"], both, MultiLabelAnswers(LABELS, [0.5] * 3))
    assert answer["labels"] == ["card", "refund"]
    assert [e["label"] for e in answer["explanations"]] == ["card", "refund"]
    card, refund = ({a["text"]: a["weight"] for a in e["attributions"]} for e in answer["explanations"])
    assert card["card"] == 0.9 and card["refund"] == 0 and refund["refund"] == 0.6 and refund["card"] == 0


def test_multi_label_explains_the_top_label_when_none_passes_or_the_named_one():
    answers = MultiLabelAnswers(LABELS, [0.95] * 3)
    [answer] = explain(["a refund"], Decider(), answers)
    assert answer["labels"] == [] and [e["label"] for e in answer["explanations"]] == ["refund"]
    [named] = explain(["a refund"], Decider(), MultiLabelAnswers(LABELS, [0.5] * 3), label="card")
    assert named["labels"] == ["refund"] and [e["label"] for e in named["explanations"]] == ["card"]
    assert [a["weight"] for a in named["explanations"][0]["attributions"]] == [0.0, 0.0]


@pytest.mark.parametrize("thresholds", [None, [0.5] * 3], ids=["single-label", "multi-label"])
def test_a_tiny_bundle_end_to_end(tmp_path, thresholds):
    bundle = make_tiny_bundle(tmp_path / "export", labels=LABELS, thresholds=thresholds)
    scorer = Scorer.load(bundle, threads=1)  # as served
    calls = []

    def probabilities(texts):
        calls.append(len(texts))
        return scorer.probabilities(texts)

    texts = ["my card has not arrived yet", "terrible service, I want a refund now"]
    results = explain(texts, probabilities, scorer.answers)
    assert calls == [2 + 6 + 7]
    for text, result in zip(texts, results, strict=True):
        explained = result["explanations"] if thresholds else [result]
        assert explained and set(result.get("labels", [])) <= {e["label"] for e in explained}
        for e in explained:
            assert e["label"] in LABELS and 0 < e["score"] <= 1
            assert [(a["start"], a["end"]) for a in e["attributions"]] == [(w.start, w.end) for w in words_of(text)]
            # A weight is the drop of the label's probability: bounded by it.
            assert all(-1 <= a["weight"] <= e["score"] + 1e-4 for a in e["attributions"])
    assert Word("card", 3, 7) == words_of(texts[0])[1]


# ---------------------------------------------------------------------------------------------- textclf explain

RESULT = {"label": "refund", "score": 0.91, "attributions": [
    {"text": "my", "start": 6, "end": 8, "weight": 0.0}, {"text": "refund", "start": 9, "end": 15, "weight": 0.41},
    {"text": "<b>", "start": 16, "end": 17, "weight": -0.2}]}


def test_the_terminal_without_colour_prints_weights_in_brackets():
    out = cli.terminal([("Where my refund ?", RESULT)], colour=False)
    assert "\x1b" not in out
    assert out.splitlines() == ["[1] refund  0.910", "    Where my[+0.000] refund[+0.410] ?[-0.200]"]


def test_the_terminal_shades_words_green_for_and_red_against():
    out = cli.terminal([("Where my refund ?", RESULT)], colour=True)
    assert cli.BLACK_ON.format(cli.GREEN[-1]) + "refund" + cli.RESET in out  # the strongest word, darkest
    assert cli.BLACK_ON.format(cli.RED[1]) + "?" + cli.RESET in out  # half as strong, against
    assert " my " in out  # no weight, no shade
    faint = [{**a, "weight": a["weight"] / 10} for a in RESULT["attributions"]]  # strongest 0.041: no word decides
    assert cli.BLACK_ON.format(cli.GREEN[1]) + "refund" in cli.shade_terminal("Where my refund ?", faint, True)


def test_colour_only_on_a_terminal_without_no_color():
    class Tty:
        def isatty(self):
            return True

    assert cli.use_colour(Tty(), {}) and not cli.use_colour(Tty(), {"NO_COLOR": "1"})
    assert not cli.use_colour(io.StringIO(), {})


def test_multi_label_results_show_each_explained_label():
    multi = {"labels": ["card", "refund"], "explanations": [{**RESULT, "label": "card"}, RESULT]}
    out = cli.terminal([("Where my refund ?", multi)], colour=False).splitlines()
    assert out[0] == "[1] card  0.910  (predicted: card, refund)" and out[2].startswith("[1] refund")


def test_the_html_page_escapes_text_and_is_written_atomically(tmp_path):
    text = 'Where <my> "refund" & co'
    result = explain([text], Decider(), SingleLabelAnswers(LABELS))[0]
    page = cli.html_page([(text, result)], "Explanations: <bundle>")
    assert "<my>" not in page and '"refund"' not in page
    assert "&lt;<span" in page and "&quot;<span" in page and "&amp; <span" in page
    assert '<span class="for" style="--a:0.85" title="+0.8000">refund</span>' in page
    assert "<script" not in page and "Explanations: &lt;bundle&gt;" in page and "legend" in page
    target = tmp_path / "page.html"
    target.write_text("old")

    def failing(lines):
        yield from ["<html>", "half"]
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(target, failing([]))
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_the_command_explains_texts_and_writes_the_page(tmp_path, monkeypatch, capsys):
    class FakeScorer:
        labels, answers = LABELS, SingleLabelAnswers(LABELS)
        probabilities = Decider()

    monkeypatch.setattr(cli.Scorer, "load", classmethod(lambda cls, *args, **kwargs: FakeScorer()))
    bundle = tmp_path / "export"
    bundle.mkdir()
    (bundle / "model_card.json").write_text("{}")
    texts = tmp_path / "texts.txt"
    texts.write_text("my card is lost\n\nwhere is my refund\n")
    page = tmp_path / "out" / "page.html"
    assert cli.command([str(bundle), "--text", "hello", "--file", str(texts), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "[1] other" in out and "[2] card" in out and "[3] refund" in out and "refund[+0.800]" in out
    assert page.read_text().count('class="text"') == 3
    assert cli.command([str(bundle), "--text", "hello", "--label", "nope"]) == 2
    assert "not one of the model's labels" in capsys.readouterr().err
    assert cli.command([str(bundle), "--text", "one two three", "--max-words", "2"]) == 2
    with pytest.raises(SystemExit) as exited:  # the options' own checks: argparse's exit
        cli.command([str(bundle)])
    assert exited.value.code == 2 and "nothing to explain" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the bench


def test_the_bench_samples_texts_of_four_words_or_more():
    texts = [f"word{i} a b c" for i in range(20)] + ["too short here", "too short here"]
    sample = bench.sample_texts(texts, 5, seed=1)
    assert len(sample) == 5 and all(len(words_of(t)) >= 4 for t in sample)
    assert sample == bench.sample_texts(texts, 5, seed=1) and len(bench.sample_texts(texts, 100, 1)) == 20


def test_the_bench_picks_top_random_and_bottom_words():
    import random

    chosen = bench.picks([0.1, 0.5, -0.3, 0.0, 0.5, 0.2], 3, random.Random(0))
    assert chosen["top"] == [1, 4, 5] and chosen["bottom"] == [0, 2, 3]
    assert len(set(chosen["random"])) == 3 and chosen["random"] == sorted(chosen["random"])


def test_the_bench_summary_and_report():
    drops = {"top": [0.5, 0.4, 0.1, 0.3, 0.2], "random": [0.1, 0.4, 0.0, 0.1, 0.0],
             "bottom": [-0.1, 0.0, 0.0, 0.0, 0.0]}
    row = bench.summary(drops, same_picks=1)
    assert row["top_beats_random"] == 0.8 and row["top_beats_bottom"] == 1.0 and row["target_met"]
    assert abs(row["mean_drop_top"] - 0.3) < 1e-9 and row["random_pick_was_top_pick"] == 1
    assert not bench.summary({**drops, "random": drops["top"]}, 5)["target_met"]
    results = {"command": "python -m bench.explain_bench", "date": "2026-12-04", "torch_threads": 1, "words": 3,
               "load_average_start": [0.5, 0.4, 0.3], "load_average_end": [1.25, 1.0, 0.5],
               "batch": 8, "machine": {"cpu_class": "amx", "cpus": 2, "cpu": "Xeon"},
               "faithfulness": {"rt-polarity": {**row, "mean_words": 18.5,
                                                "misses": bench.misses(drops, [True] * 5, [4, 5, 6, 7, 8])}},
               "throughput": {"6 layers": {"layers": 6, "texts": 160, "mean_words": 18.5, "rows_per_text": 19.5,
                                           "texts_per_s": 9.5}}}
    text = bench.markdown(results)
    assert "`python -m bench.explain_bench` on amx" in text and "1 torch thread(s), load average 0.5 at the start" in text
    assert "| rt-polarity | 5 | 18.5 | 80.0% | 100.0% | +0.300 |" in text and "on every run): met." in text
    assert "| 6 layers | 6 | 160 | 18.5 | 19.5 | 9.50 | 105 |" in text
    assert "of the 1 texts where random-3 hurt at least as much, 1 drew one of the top-3 words at random; their " \
           "median length is 5 words (all texts: 6)" in text


def test_the_bench_says_in_one_line_when_the_data_is_missing(tmp_path, capsys):
    assert bench.command(["--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: benchmark data not found")
