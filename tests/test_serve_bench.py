"""The serving benchmark's own logic: which variants it measures, which it serves, where results go."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench import serve_report
from bench.flops import FlopModel, limit_for, mixed_limit
from bench.serve_bench import (
    ServeBenchConfig,
    available_variants,
    batch_invariance,
    choose_variant,
    list_bodies,
    load_test,
    parse_ours,
    report_stem,
    server_key,
)
from bench.serve_report import cpu_class
from bench.serve_runs import Measured
from tests.test_rundir import finished
from textclf.core.errors import UserError


def test_bf16_is_only_measured_where_the_cpu_has_bf16_instructions():
    assert available_variants(has_bf16=True) == ("fp32", "int8", "bf16", "onnx-fp32", "onnx-int8", "pt2-fp32")
    assert available_variants(has_bf16=False) == ("fp32", "int8", "onnx-fp32", "onnx-int8", "pt2-fp32")


def test_onnx_variants_keep_their_arithmetic_for_tolerances_and_limits():
    runs = {"C-onnx-int8-b1": _measured([[0.0, 1.0]]), "C-onnx-int8-b32": _measured([[0.0, 1.0 + 5e-4]]),
            "C-onnx-fp32-b1": _measured([[0.0, 1.0]]), "C-onnx-fp32-b32": _measured([[0.0, 1.0 + 5e-4]])}
    out = batch_invariance(runs)
    assert out["onnx-int8"]["ok"] and out["onnx-int8"]["tolerance"] == 1e-3  # int8's tolerance
    assert not out["onnx-fp32"]["ok"] and out["onnx-fp32"]["tolerance"] == 1e-4


def test_onnx_targets_compare_runtimes_on_the_same_model():
    rows = [_row("fp32", 100, 0.84), _row("onnx-fp32", 130, 0.84), _row("onnx-int8", 200, 0.832)]
    got = {t["name"]: t for t in serve_report.runtime_targets({r["key"]: r for r in rows})}
    speed = got["ONNX Runtime fp32 vs TorchScript fp32, in-process b32"]
    assert (speed["value"], speed["met"]) == (1.3, True)
    drop = got["ONNX Runtime int8 accuracy vs ONNX Runtime fp32 (points lost)"]
    assert (drop["value"], drop["met"]) == (0.8, False)
    assert serve_report.runtime_targets({r["key"]: r for r in rows[:1]}) == []


@pytest.mark.parametrize("isa, expected", [
    (["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"], "amx"),
    (["avx2", "avx512f", "avx512_vnni", "avx512_bf16"], "avx512-bf16"),
    (["avx2", "avx512f", "avx512_vnni"], "avx512"),
    (["avx2"], "avx2"),
    ([], "other"),
])
def test_results_are_kept_per_cpu_class(isa, expected):
    assert cpu_class(isa) == expected


@pytest.mark.parametrize("options, stem", [
    ({}, "serve-avx2"),
    ({"max_texts": 200}, "serve-avx2-quick"),
    ({"name": "student3"}, "serve-avx2-student3"),
    ({"name": "mpnet", "max_texts": 256}, "serve-avx2-mpnet-quick"),
])
def test_a_named_model_gets_its_own_report_beside_the_cpu_classs(tmp_path, options, stem):
    finished(tmp_path / "run")
    (tmp_path / "test.csv").write_text("text,label\nawful,neg\n")
    config = ServeBenchConfig(run=str(tmp_path / "run"), data=str(tmp_path), **options)
    assert report_stem(config, ["avx2"]) == stem


@pytest.mark.parametrize("name", ["../x", "Student", "a b", ""])
def test_a_report_name_that_is_not_a_plain_file_name_is_refused(tmp_path, name):
    finished(tmp_path / "run")
    (tmp_path / "test.csv").write_text("text,label\nawful,neg\n")
    with pytest.raises(UserError, match="--name"):
        ServeBenchConfig(run=str(tmp_path / "run"), data=str(tmp_path), name=name)


@pytest.mark.parametrize("per_request", [3, 33, 0])
def test_texts_per_request_must_split_the_texts_in_flight_into_whole_requests(tmp_path, per_request):
    finished(tmp_path / "run")
    (tmp_path / "test.csv").write_text("text,label\nawful,neg\n")
    with pytest.raises(UserError, match="--texts-per-request"):
        ServeBenchConfig(run=str(tmp_path / "run"), data=str(tmp_path), texts_per_request=per_request)


def test_texts_sent_in_lists_come_back_one_answer_per_text_in_order():
    labels = ["neg", "pos"]
    bodies = list_bodies(["a", "b", "c", "d", "e"], 2)
    assert [json.loads(b) for b in bodies] == [{"texts": ["a", "b"]}, {"texts": ["c", "d"]}, {"texts": ["e"]}]
    # what the handler answers a {"texts"} request: a list, in input order (handlers/parsing.py)
    answers = [json.dumps([{"label": "pos", "scores": {"pos": 0.9, "neg": 0.1}},
                           {"label": "neg", "scores": {"pos": 0.2, "neg": 0.8}}]).encode(),
               json.dumps([{"label": "neg", "scores": {"pos": 0.3, "neg": 0.7}}] * 2).encode(),
               json.dumps([{"label": "pos", "scores": {"pos": 0.6, "neg": 0.4}}]).encode()]
    preds, probs = parse_ours(answers, labels)
    assert preds.tolist() == [1, 0, 0, 0, 1] and probs[0].tolist() == pytest.approx([0.1, 0.9])
    assert (server_key("D1", 4, 8), server_key("D", 32), server_key("D", 32, 1)) == ("D1-c4x8", "D-c32", "D-c32")


def test_the_benchmark_reads_the_test_split_the_run_was_trained_on_unless_told_otherwise(tmp_path):
    run = finished(tmp_path / "run")
    with pytest.raises(UserError, match="pass --data"):  # a run whose data is not a local folder
        ServeBenchConfig(run=str(run.path))
    (tmp_path / "tickets").mkdir()
    (tmp_path / "tickets" / "test.csv").write_text("body,queue\nrefund please,billing\n")
    run.write_run({**run.read_run(), "config": {"data": str(tmp_path / "tickets"), "text_column": "body",
                                                "label_column": "queue"}})
    assert ServeBenchConfig(run=str(run.path)).test_data() == tmp_path / "tickets"
    texts, gold = load_test(tmp_path / "tickets", {"labels": ["billing", "other"], "config": {
        "text_column": "body", "label_column": "queue"}}, None)
    assert texts == ["refund please"] and gold.tolist() == [0]


def test_served_answers_of_a_large_label_set_carry_only_their_best_scores_and_still_parse():
    labels = [f"intent{i}" for i in range(12)]
    bodies = [b'{"label": "intent7", "score": 0.9, "scores": {"intent7": 0.9, "intent2": 0.05}}',
              b'{"label": "intent0", "score": 0.6, "scores": {"intent0": 0.6}}']
    preds, probs = parse_ours(bodies, labels)
    assert preds.tolist() == [7, 0]
    assert probs.shape == (2, 12) and probs[0, 2] == pytest.approx(0.05) and probs[1, 11] == 0


def _measured(logits):
    logits = np.array(logits, dtype=np.float32)
    return Measured(preds=logits.argmax(1), scores=logits, latencies_s=[0.01], wall_s=1.0)


def test_batch_invariance_covers_the_measured_variants_only():
    runs = {"C-fp32-b1": _measured([[0.0, 1.0]]), "C-fp32-b32": _measured([[0.0, 1.0 + 5e-5]]),
            "C-int8-b1": _measured([[0.0, 1.0]]), "C-int8-b32": _measured([[0.0, 1.5]])}
    out = batch_invariance(runs)
    assert set(out) == {"fp32", "int8"}
    assert out["fp32"]["ok"] and not out["int8"]["ok"]


def test_pt2_rows_are_exported_as_pt2_and_served_rows_checked_against_their_own_variant(tmp_path):
    from bench.serve_bench import checks, export_format, precision, pt2_package, runtime_name

    assert (export_format("pt2-fp32"), precision("pt2-fp32"), runtime_name("pt2-fp32")) == ("pt2", "fp32", "AOTInductor")
    assert (export_format("onnx-int8"), export_format("bf16")) == ("onnx", "torchscript")
    card = {"variant": "fp32", "export": {"fp32": {"aotinductor": {"compile_seconds": 41.5, "export_seconds": 2.1,
                                                                   "package_bytes": 93_000_000, "device": "cpu"}}}}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    assert pt2_package(tmp_path) == {"compile_seconds": 41.5, "export_seconds": 2.1, "package_bytes": 93_000_000}
    same, flipped = _measured([[0.0, 1.0]]), _measured([[1.0, 0.0]])
    runs = {"A-b32": same, "C-fp32-b32": same, "C-fp32-b1": same, "C-pt2-fp32-b32": flipped, "D-c32": same,
            "D-pt2-c32": flipped}
    rows = [{"key": k, "variant": "pt2-fp32" if "pt2" in k else "fp32", "accuracy": 1.0} for k in runs]
    got = {c["name"]: c["ok"] for c in checks(runs, rows, "fp32", {"fp32": {"ok": True, "max_abs_logit_diff": 0,
                                                                            "tolerance": 1e-4, "differing": 0}})}
    assert got["D-c32 predicts like C-fp32-b32 in-process"] and got["D-pt2-c32 predicts like C-pt2-fp32-b32 in-process"]


def _row(variant, texts_per_s, accuracy):
    return {"key": f"C-{variant}-b32", "variant": variant, "batch": 32, "texts_per_s": texts_per_s, "accuracy": accuracy}


def test_the_served_variant_is_the_fastest_accurate_and_batch_invariant_one():
    rows = [_row("fp32", 100, 0.84), _row("int8", 300, 0.839), _row("bf16", 200, 0.838)]
    assert choose_variant(rows, {"fp32": True, "int8": False, "bf16": True}) == "bf16"
    assert choose_variant(rows, {"fp32": True, "int8": True, "bf16": True}) == "int8"
    rows[2]["accuracy"] = 0.83  # 1 point below fp32
    assert choose_variant(rows, {"fp32": True, "int8": False, "bf16": True}) == "fp32"
    assert choose_variant(rows[:2], {"fp32": True, "int8": False}) == "fp32"


def test_rows_without_their_own_limit_are_measured_against_fp32():
    limit = {"fp32_gflops": 170.0, "bf16_gflops": None, "int8_gflops": 300.0}
    assert limit_for(limit, "int8") == 300.0
    assert limit_for(limit, "bf16") == 170.0


def test_an_int8_variant_is_measured_against_the_mix_of_its_int8_and_fp32_work():
    limit = {"fp32_gflops": 100.0, "bf16_gflops": None, "int8_gflops": 300.0}
    assert (mixed_limit(limit, 1.0), mixed_limit(limit, 0.0), mixed_limit(limit, 0.5)) == (300.0, 100.0, 150.0)
    # One text of 2 tokens: Linears 2 * 12 * 2 = 48 FLOPs, attention 4 * 1 * 1 * 2^2 = 16.
    model = FlopModel(p_tok=12, p_head=0, layers=1, hidden=1)
    assert model.int8_share([2], int8_params=12) == 0.75  # every Linear int8: attention still fp32
    assert model.int8_share([2], int8_params=4) == 0.25


def test_the_int8_weights_of_an_onnx_graph_are_its_matmul_weights_not_its_embeddings(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from training.onnx_build import int8_weights

    def int8(name, rows, cols):
        return helper.make_tensor(name, TensorProto.INT8, [rows, cols], [0] * rows * cols)

    scalar = [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("zero", TensorProto.INT8, [], [0])]
    nodes = [helper.make_node("DequantizeLinear", ["table_q", "scale", "zero"], ["table"]),  # quantised embeddings
             helper.make_node("Gather", ["table", "ids"], ["x"]),
             helper.make_node("DequantizeLinear", ["w_q", "scale", "zero"], ["w"]),  # static QDQ weight
             helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("MatMul", ["h", "w_fp32"], ["y"])]  # left in fp32
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [int8("table_q", 10, 4), int8("w_q", 4, 3), helper.make_tensor("w_fp32", TensorProto.FLOAT, [3, 2], [0.0] * 6),
         *scalar])
    onnx.save(helper.make_model(graph), tmp_path / "model.onnx")
    assert int8_weights(tmp_path / "model.onnx") == 4 * 3


def test_report_says_which_variants_were_not_measured_and_why():
    results = {"rows": [_row("fp32", 100, 0.84)],
               "batch_invariance": {"fp32": {"ok": True, "max_abs_logit_diff": 1e-6, "tolerance": 1e-4}},
               "skipped_variants": {"bf16": "no bf16 instructions on this CPU (AVX512-BF16 or AMX)"}}
    text = "\n".join(serve_report.variants(results))
    assert "| fp32 |" in text and "| bf16 |" not in text
    assert "bf16 not measured: no bf16 instructions on this CPU" in text


def test_the_4x_target_reports_the_ceiling_the_compute_limit_allows():
    rows = [{"key": "A-b32", "texts_per_s": 100.0}, {"key": "C-fp32-b32", "texts_per_s": 150.0, "p50_ms": 200.0},
            {"key": "C-fp32-b1", "texts_per_s": 90.0, "p50_ms": 10.0}, {"key": "D-c32", "texts_per_s": 140.0},
            {"key": "D-c1", "p50_ms": 12.0}]
    out = serve_report.targets(rows, "fp32", limit_gflops=170.0, gflop_per_text=0.58)
    assert (out[0]["value"], out[0]["met"], out[0]["ceiling"]) == (1.5, False, 2.93)  # 170 / 0.58 / 100
    assert "ceiling" not in serve_report.targets(rows, "fp32")[0]
    assert [(t["name"].split(" vs")[0], t["met"]) for t in out[1:]] == [("D c32", True), ("D c1 p50", True)]


def test_targets_are_checked_for_every_deployment_measured():
    rows = [{"key": "A-b32", "texts_per_s": 100.0}, {"key": "B-c32", "texts_per_s": 30.0},
            {"key": "C-fp32-b32", "texts_per_s": 160.0}, {"key": "C-fp32-b1", "p50_ms": 10.0},
            {"key": "D-c32", "texts_per_s": 180.0}, {"key": "D-c1", "p50_ms": 17.0},
            {"key": "D1-c32", "texts_per_s": 140.0}, {"key": "D1-c1", "p50_ms": 12.5}]
    met = {t["name"].split(" (")[0].replace(" in-process", ""): t["met"] for t in serve_report.targets(rows, "fp32")[1:]}
    assert met == {"D c32 vs C-fp32 b32": True, "D c1 p50 vs C-fp32 b1 p50": False, "D c32 vs B c32": True,
                   "D1 c32 vs C-fp32 b32": False, "D1 c1 p50 vs C-fp32 b1 p50": True, "D1 c32 vs B c32": False}


def test_server_targets_use_the_median_of_paired_passes_when_the_run_has_them():
    rows = [{"key": "A-b32", "texts_per_s": 100.0}, {"key": "C-fp32-b32", "texts_per_s": 200.0},
            {"key": "C-fp32-b1", "p50_ms": 8.0}, {"key": "D-c32", "texts_per_s": 170.0}, {"key": "D-c1", "p50_ms": 12.0}]
    # Best passes alone: 0.85x and +4 ms. Pass by pass, each server pass next to its own reference, it holds.
    paired = {"D-c32": {"reference": "C-fp32-b32", "texts_per_s": [170.0, 150.0, 160.0],
                        "reference_texts_per_s": [180.0, 160.0, 200.0]},
              "D-c1": {"reference": "C-fp32-b1", "p50_ms": [12.0, 13.0, 14.0], "reference_p50_ms": [10.0, 10.5, 9.0]}}
    best = {t["name"].split(" vs")[0]: (t["value"], t["met"]) for t in serve_report.targets(rows, "fp32")[1:]}
    assert best == {"D c32": (0.85, False), "D c1 p50": (4.0, False)}
    targets = serve_report.targets(rows, "fp32", paired=paired)[1:]
    out = {t["name"].split(" vs")[0]: (t["value"], t["met"], t["paired"]) for t in targets}
    assert out == {"D c32": (0.94, True, True), "D c1 p50": (2.5, True, True)}


def test_texts_sent_in_lists_are_held_to_the_same_ratio_as_one_text_per_request():
    rows = [{"key": "A-b32", "texts_per_s": 100.0}, {"key": "C-fp32-b32", "texts_per_s": 200.0},
            {"key": "C-fp32-b1", "p50_ms": 8.0}, {"key": "D1-c32", "texts_per_s": 150.0},
            {"key": "D1-c4x8", "texts_per_s": 170.0, "concurrency": 4, "texts_per_request": 8}]
    paired = {"D1-c4x8": {"reference": "C-fp32-b32", "texts_per_s": [190.0, 150.0, 185.0],
                          "reference_texts_per_s": [200.0, 200.0, 200.0]}}
    out = {t["name"]: (t["value"], t["met"]) for t in serve_report.targets(rows, "fp32", paired=paired)[1:]}
    assert out == {"D1 c32 vs C-fp32 in-process b32": (0.75, False),
                   "D1 c4 x 8 texts per request vs C-fp32 in-process b32": (0.93, True)}  # median of 0.95, 0.75, 0.925


def test_report_states_torchserves_own_concurrency_1_floor():
    results = {"rows": [{"key": "D-c1", "p50_ms": 17.5}, {"key": "D1-c1", "p50_ms": 12.7}],
               "floor": {"p50_ms": [2.4, 2.9, 3.3], "median_p50_ms": 2.9, "batch_size": 32, "max_batch_delay_ms": 1}}
    (line,) = [x for x in serve_report.floor_lines(results) if x]
    assert "**2.9 ms** p50 (median of 2.4 / 2.9 / 3.3 ms)" in line and "batch_size 32" in line
    assert "D c1 p50 17.5 ms; D1 c1 p50 12.7 ms" in line
    assert serve_report.floor_lines({"rows": []}) == []  # runs from before the floor was measured
