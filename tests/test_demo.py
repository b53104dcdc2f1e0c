"""textclf.pipelines.demo picks held-out texts deterministically, one per label, falling back to handwritten ones."""
from __future__ import annotations

import pandas as pd

from textclf.pipelines.demo import EXAMPLES, held_out_examples
from training.rundir import RunDir


def test_one_short_linkless_text_per_label(tmp_path):
    RunDir(tmp_path).write_test(pd.DataFrame({
        "text": ["see http://x.co great", "x" * 200, "awful flight", "fine day", "lovely crew", "bad"],
        "label": ["pos", "pos", "neg", "neu", "pos", "neg"]}))
    assert held_out_examples(tmp_path) == [("awful flight", "neg"), ("fine day", "neu"), ("lovely crew", "pos")]


def test_without_saved_split_uses_handwritten_texts(tmp_path):
    assert held_out_examples(tmp_path) == [(text, None) for text in EXAMPLES]
    assert held_out_examples(None) == [(text, None) for text in EXAMPLES]


def test_multi_label_split_shows_each_label_set_once(tmp_path):
    RunDir(tmp_path).write_test(pd.DataFrame({
        "text": ["card and refund", "refund only", "card again", "nothing"],
        "label": [("card", "refund"), ("refund",), ("card", "refund"), ()]}))
    assert held_out_examples(tmp_path) == [("nothing", ""), ("card and refund", "card|refund"),
                                           ("refund only", "refund")]
