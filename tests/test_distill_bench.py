"""The distillation benchmark's own logic: part and dataset selection, skipped teacher rows, the table."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench import distill_bench
from bench.distill_bench import DistillBenchConfig
from textclf.core.errors import UserError


@pytest.fixture
def data_root(tmp_path):
    for name in ("rt-polarity", "banking77"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.csv").write_text("text,label\n")
    return tmp_path


def test_parts_and_datasets_are_checked(data_root):
    assert DistillBenchConfig(data_root=data_root, parts="b, a").part_list == ["b", "a"]
    with pytest.raises(UserError, match="--parts takes a,b,c,d"):
        DistillBenchConfig(data_root=data_root, parts="a,e")
    with pytest.raises(UserError, match="--parts takes"):
        DistillBenchConfig(data_root=data_root, datasets="imdb")
    with pytest.raises(UserError, match="--noisy-copies must be an integer >= 0"):
        DistillBenchConfig(data_root=data_root, noisy_copies=-1)
    with pytest.raises(UserError, match="benchmark data not found"):
        DistillBenchConfig(data_root=data_root / "nowhere")


def measured(accuracy: float, **speeds) -> dict:
    """A row's `variants` as measure_frontier writes them: variant name -> texts/s, at one accuracy."""
    return {name.replace("_", "-"): {"texts_per_s": s, "accuracy": accuracy, "batch_invariant": True,
                                     "max_abs_logit_diff_alone": 0.0} for name, s in speeds.items()}


def test_table_gives_speed_against_the_fine_tuned_minilm_and_says_why_rows_were_skipped(data_root):
    row = {"accuracy": 0.8, "macro_f1": 0.79, "validation_accuracy": 0.805, "train_seconds": 100,
           "train_samples_per_second": 50.0, "layers": 6}
    results = {"machine": {"isa": ["avx2"], "cpu": "test CPU", "cpus": 2},
               "rt-polarity": {"a": {**row, "variants": measured(0.8, fp32=100, onnx_fp32=120)},
                               "b": {**row, "layers": 3, "accuracy": 0.79, "variants": measured(0.79, fp32=100, onnx_fp32=240),
                                     "noisy_copies": 2, "recipe": distill_bench.STUDENT_RECIPE},
                               "c": {"skipped": "teacher model not installed"}}}
    table = distill_bench.markdown(results, DistillBenchConfig(data_root=data_root))
    assert ("| rt-polarity | b | 3-layer student of (a), 2 noisy copies per text, learning rate 0.0001, batch 32, "
            "at most 10 epochs | 3 | 79.00% | 79.0 | 80.50% |") in table  # its own recipe, named in its row
    assert "| rt-polarity | a | MiniLM-L6 fine-tuned | 6 |" in table and "| 2.00x |" in table
    assert "skipped: teacher model not installed" in table and "avx2 CPU" in table


def test_targets_compare_the_student_and_the_distilled_minilm_with_the_fine_tuned_one(data_root):
    row = {"accuracy": 0.80, "macro_f1": 0.8, "train_seconds": 1, "train_samples_per_second": 1.0, "layers": 6,
           "variants": measured(0.8, fp32=100, onnx_fp32=100)}
    results = {"machine": {"isa": ["avx2"], "cpu": "test CPU", "cpus": 2},
               "rt-polarity": {"a": row, "b": {**row, "accuracy": 0.79, "variants": measured(0.79, fp32=200, onnx_fp32=170)},
                               "d": {**row, "accuracy": 0.815, "variants": {}}},
               "banking77": {"a": {**row, "variants": {}}, "c": {"skipped": "no teacher"}, "d": {"skipped": "no teacher"}}}
    found = {(t["dataset"], t["name"][:3]): t for t in distill_bench.targets(results)}
    assert set(found) == {("rt-polarity", "(b)"), ("rt-polarity", "(d)")}  # no pipeline measured: no target 4
    assert not found["rt-polarity", "(b)"]["met"]  # 1 point lost is fine, but ONNX Runtime is only 1.7x
    assert "TorchScript 2.00x, ONNX Runtime 1.70x" in found["rt-polarity", "(b)"]["detail"]
    assert found["rt-polarity", "(d)"]["met"] and found["rt-polarity", "(d)"]["detail"] == "+1.50 points"
    results["rt-polarity"]["b"]["variants"]["onnx-fp32"]["texts_per_s"] = 180
    assert distill_bench.targets(results)[0]["met"]
    results["rt-polarity"]["b"]["vs_a"] = {"points": -1.0, "interval_95": [-2.5, 0.5]}
    results["rt-polarity"]["d"]["vs_a"] = {"points": 1.5, "interval_95": [0.25, 2.75]}
    b, d = (t["detail"] for t in distill_bench.targets(results) if t["name"][:3] in ("(b)", "(d)"))
    assert b.startswith("-1.00 points (95% paired interval -2.50 to +0.50); ")
    assert d == "+1.50 points (95% paired interval +0.25 to +2.75)"
    del results["rt-polarity"]["d"]["vs_a"]
    assert "| rt-polarity | (d) >= (a) + 1 point | +1.50 points | **met** |" in distill_bench.markdown(
        results, DistillBenchConfig(data_root=data_root))


def test_a_rerun_reuses_a_run_finished_with_the_same_settings_after_its_teacher(data_root, tmp_path):
    import json
    import os
    from dataclasses import asdict, replace

    from training.distill import DistillConfig
    from training.rundir import RunDir

    config = DistillBenchConfig(data_root=data_root)

    def finish(run, train, mtime, distillation=None):
        done = RunDir(run)
        done.model_config_file.parent.mkdir(parents=True)
        done.model_config_file.write_text("{}")
        done.test_file.parent.mkdir(parents=True, exist_ok=True)
        done.test_file.write_text("text,label\n")
        done.run_file.write_text(json.dumps({"config": asdict(train), "labels": ["a", "b"], "max_length": 8,
                                             "distillation": distillation}))
        done.metrics_file.write_text(json.dumps({"test": {"accuracy": 0.9}}))
        os.utime(done.metrics_file, (mtime, mtime))

    teacher, student = tmp_path / "runs" / "mpnet", tmp_path / "runs" / "minilm-from-mpnet"
    train = distill_bench.train_config(config, "rt-polarity", student)
    finish(teacher, distill_bench.train_config(config, "rt-polarity", teacher, model="mpnet"), 1_000)
    distill = DistillConfig(teacher=str(teacher), train=train)
    assert distill_bench.finished_run(student, train, distill) is None  # never ran
    finish(student, train, 2_000, {"teacher": str(teacher), "alpha": 0.5, "temperature": 2.0, "student_layers": None})
    assert distill_bench.finished_run(student, train, distill) == {"test": {"accuracy": 0.9}}
    other = distill_bench.train_config(DistillBenchConfig(data_root=data_root, max_train_samples=100), "rt-polarity", student)
    assert distill_bench.finished_run(student, other, distill) is None  # other training settings: train again
    assert distill_bench.finished_run(student, train, replace(distill, alpha=0.7)) is None  # other distillation
    assert distill_bench.finished_run(student, train, replace(distill, noisy_copies=2)) is None  # a run without copies
    hidden = replace(distill)
    hidden.hidden_weight = 1.0  # set after validation, which wants a layer-copied student for it
    assert distill_bench.finished_run(student, train, hidden) is None  # a run without the hidden-state term
    as_b = distill_bench.train_config(config, "rt-polarity", student, part="b")  # the 3-layer student's longer recipe
    assert (as_b.learning_rate, as_b.epochs) == (1e-4, 10) and (train.learning_rate, train.epochs) == (5e-5, 3)
    assert distill_bench.finished_run(student, as_b, distill) is None
    os.utime(RunDir(teacher).metrics_file, (3_000, 3_000))
    assert distill_bench.finished_run(student, train, distill) is None  # the teacher changed since


def test_rows_whose_runs_are_gone_lose_their_old_speeds_instead_of_mixing_them_with_this_pass(data_root, tmp_path):
    # A fresh clone running --parts a keeps the committed b row, whose run directory is not there
    row = {"accuracy": 0.8, "macro_f1": 0.8, "validation_accuracy": 0.8, "train_seconds": 1,
           "train_samples_per_second": 1.0, "layers": 3, "variants": measured(0.8, fp32=300, onnx_fp32=260)}
    half = tmp_path / "half" / "minilm"  # training interrupted: the folder is there, the finished run is not
    (half / "model").mkdir(parents=True)
    rows = {"b": {**row, "run": str(tmp_path / "gone" / "student3")}, "c": {"skipped": "no teacher"},
            "d": {**row, "run": str(half)}}
    distill_bench.measure_frontier(rows, data_root / "rt-polarity", repeats=1)
    for part in "bd":
        assert "variants" not in rows[part] and "missing" in rows[part]["speed_skipped"]
    results = {"machine": {"isa": ["avx2"], "cpu": "test CPU", "cpus": 2},
               "rt-polarity": {"a": {**row, "layers": 6}, "b": rows["b"]}}
    assert "| 3 | 80.00% | 80.0 | 80.00% | 1 | 1.0 | not measured | not measured |  |" in distill_bench.markdown(
        results, DistillBenchConfig(data_root=data_root))
    target = distill_bench.targets(results)[0]
    assert not target["met"] and target["detail"] == "+0.00 points; speed not measured"


def test_each_row_trains_with_its_recipe_and_only_d_learns_from_noisy_copies(data_root, tmp_path, monkeypatch):
    (data_root / "rt-polarity" / "test.csv").write_text("text,label\nfine,positive\n")
    teacher_model = tmp_path / "mpnet"
    teacher_model.mkdir()
    (teacher_model / "config.json").write_text("{}")
    trained = {}
    monkeypatch.setattr(distill_bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(distill_bench, "finished_run", lambda *args: None)
    # what the bench asks for, not a real DistillConfig (that one checks the teacher run exists)
    monkeypatch.setattr(distill_bench, "DistillConfig", lambda **options: SimpleNamespace(**options))
    monkeypatch.setattr(distill_bench, "train_main", lambda train: trained.setdefault(Path(train.output_dir).name, train))
    monkeypatch.setattr(distill_bench, "distill_main", lambda d: trained.setdefault(Path(d.train.output_dir).name, d))
    monkeypatch.setattr(distill_bench, "row", lambda metrics, run_dir: {})
    scored = {}
    monkeypatch.setattr(distill_bench, "measure_frontier",
                        lambda rows, data, repeats: scored.setdefault(data.name, repeats))
    monkeypatch.setattr(distill_bench, "markdown", lambda results, config: "")
    monkeypatch.setattr(distill_bench, "plot", lambda results, path: None)
    results = distill_bench.run_rows(DistillBenchConfig(data_root=data_root, datasets="banking77",
                                                        runs=tmp_path / "runs", teacher_model=teacher_model))
    # banking77's 77 classes get larger steps: 2e-4 for MiniLM-L6 (a and d), 1e-4 for the 768-wide mpnet teacher;
    # the student keeps make distill's defaults
    assert trained["minilm"].learning_rate == trained["minilm-from-mpnet"].train.learning_rate == 2e-4
    assert trained["mpnet"].learning_rate == 1e-4 and trained["student3"].train.learning_rate == 1e-4
    assert results["banking77"]["c"]["recipe"]["learning_rate"] == 1e-4 and set(scored) == {"banking77"}
    # the runs record banking77's label column, by which the frontier (bench.serve_bench.load_test) reads its texts
    assert trained["minilm"].label_column == trained["student3"].train.label_column == "category"
    trained.clear()
    results = distill_bench.run_rows(DistillBenchConfig(data_root=data_root, datasets="rt-polarity",
                                                        runs=tmp_path / "runs", teacher_model=teacher_model))
    a, b, c, d = (trained[name] for name in ("minilm", "student3", "mpnet", "minilm-from-mpnet"))
    assert (b.train.learning_rate, b.train.epochs, b.noisy_copies, b.student_layers, b.hidden_weight) == \
        (1e-4, 10, 0, [0, 2, 4], 1.0)
    assert (d.train.learning_rate, d.train.epochs, d.noisy_copies, d.student_layers, d.hidden_weight) == \
        (5e-5, 3, 2, None, 0.0)
    assert (a.learning_rate, a.epochs) == (c.learning_rate, c.epochs) == (5e-5, 3) and c.model == str(teacher_model)
    rows = results["rt-polarity"]
    assert rows["b"]["recipe"] == distill_bench.STUDENT_RECIPE and rows["b"]["noisy_copies"] == 0
    assert rows["b"]["hidden_weight"] == 1.0 and rows["d"]["hidden_weight"] == 0.0
    assert rows["d"]["recipe"] == distill_bench.RECIPE and rows["d"]["noisy_copies"] == 2


def finished_run_dir(path: Path, labels: list[str]) -> Path:
    """The files RunDir.check_finished and read_run need, no model: the frontier's exports are faked."""
    import json

    from training.rundir import RunDir

    done = RunDir(path)
    done.model_config_file.parent.mkdir(parents=True)
    done.model_config_file.write_text("{}")
    done.test_file.parent.mkdir(parents=True, exist_ok=True)
    done.test_file.write_text("text,label\n")
    done.run_file.write_text(json.dumps({"config": {}, "labels": labels, "max_length": 8}))
    done.metrics_file.write_text("{}")
    return path


def test_the_frontier_scores_every_export_on_the_test_texts_and_finds_answers_that_depend_on_the_batch(
        data_root, tmp_path, monkeypatch):
    from bench import serve_runs

    texts = [f"good film {i}" if i % 2 else f"bad film {i}" for i in range(40)]
    (data_root / "rt-polarity" / "test.csv").write_text(
        "text,label\n" + "".join(f"{t},{'positive' if t.startswith('good') else 'negative'}\n" for t in texts))
    labels = ["negative", "positive"]
    runs = {part: finished_run_dir(tmp_path / part, labels) for part in "ab"}

    def logits(batch):  # [negative, positive]: right for every text but the "film 3"s
        return np.array([[0.0, 1.0] if t.startswith("good") != t.endswith("3") else [1.0, 0.0] for t in batch])

    def classifier(bundle, max_length, chunk_size):
        if bundle.name == "int8":  # scaled by its batch, as dynamic int8 is: alone differs from in a batch
            return lambda batch: logits(batch) * (1 + 0.01 * len(batch))
        return lambda batch: logits(batch) if bundle.parent.parent.name == "a" else logits(batch[:1] * len(batch))

    exported = []
    monkeypatch.setattr(distill_bench, "available_variants", lambda has_bf16: ("fp32", "int8"))
    monkeypatch.setattr(distill_bench, "ensure_exports",
                        lambda run, cache, variants: exported.append(run) or {v: cache / v for v in variants})
    monkeypatch.setattr(serve_runs, "bundle_classifier", classifier)
    monkeypatch.setattr(serve_runs, "pipeline_classifier", lambda model_dir, names: lambda batch: logits(batch))
    rows = {part: {"run": str(run), "variants": {"stale": {}}, "vs_a": {"stale": True}} for part, run in runs.items()}
    distill_bench.measure_frontier(rows, data_root / "rt-polarity", repeats=2)

    assert exported == [runs["a"], runs["b"]] and set(rows["a"]["variants"]) == {"fp32", "int8", "pipeline"}
    a, b = rows["a"]["variants"], rows["b"]["variants"]
    assert set(b) == {"fp32", "int8"}  # the pipeline is the reference, measured on (a) only
    assert a["fp32"]["accuracy"] == a["pipeline"]["accuracy"] == 0.9  # wrong on film 3, 13, 23 and 33
    assert a["fp32"]["batch_invariant"] and a["fp32"]["max_abs_logit_diff_alone"] == 0
    assert not a["int8"]["batch_invariant"] and a["int8"]["max_abs_logit_diff_alone"] == pytest.approx(0.31)
    assert b["fp32"]["accuracy"] == 0.5  # answers every text of a batch as its first one
    assert not b["fp32"]["batch_invariant"]  # and so depends on its batch too
    assert rows["b"]["vs_a"]["points"] == -40.0 and "vs_a" not in rows["a"]  # each row against (a), fp32 to fp32


def test_a_paired_difference_counts_only_the_texts_one_model_gets_right_and_the_other_wrong():
    gold = np.zeros(100, dtype=int)
    a, b = gold.copy(), gold.copy()
    a[:4] = 1  # 4 texts only b gets right
    b[4:14] = 1  # 10 only a gets right
    a[14:20] = b[14:20] = 1  # 6 both get wrong: they do not move the difference
    got = distill_bench.paired_difference(gold, a, b)
    assert got["points"] == -6.0 and (got["only_a_right"], got["only_b_right"]) == (10, 4)
    assert got["interval_95"] == [-13.24, 1.24]  # -6 -+ 1.96 * sqrt((0.14 - 0.06^2) / 100)
    assert distill_bench.paired_difference(gold, a, a) == {"points": 0.0, "interval_95": [0.0, 0.0],
                                                           "only_a_right": 0, "only_b_right": 0}


def test_the_frontier_keeps_the_points_nothing_beats_and_target_4_serves_only_batch_independent_ones(data_root, tmp_path):
    same = {"batch_invariant": True, "max_abs_logit_diff_alone": 0.0}
    variants = {"fp32": {"texts_per_s": 100, "accuracy": 0.85, **same},
                "bf16": {"texts_per_s": 250, "accuracy": 0.845, **same},
                "int8": {"texts_per_s": 500, "accuracy": 0.849, "batch_invariant": False, "max_abs_logit_diff_alone": 0.31},
                "pipeline": {"texts_per_s": 80, "accuracy": 0.85}}
    student = {"fp32": {"texts_per_s": 200, "accuracy": 0.83, **same}, "bf16": {"texts_per_s": 400, "accuracy": 0.83, **same}}
    row = {"accuracy": 0.85, "macro_f1": 0.85, "train_seconds": 1, "train_samples_per_second": 1.0, "layers": 6}
    results = {"machine": {"isa": ["avx512_bf16"], "cpu": "test CPU", "cpus": 2},
               "rt-polarity": {"a": {**row, "variants": variants}, "b": {**row, "layers": 3, "accuracy": 0.83,
                                                                         "variants": student}}}
    found = distill_bench.points(results["rt-polarity"])
    # int8's answers depend on the batch: drawn, but not on the frontier; slower and no more accurate is beaten
    assert [p["label"] for p in distill_bench.frontier(found)] == ["b bf16", "a bf16", "a fp32"]
    target = [t for t in distill_bench.targets(results) if "pipeline" in t["name"]][0]
    assert not target["met"]  # int8 is faster and accurate, but its answers depend on the batch
    assert target["detail"] == "(a) TorchScript bf16: 3.12x, 84.50% vs 85.00%"
    student["bf16"]["accuracy"] = 0.842
    target = [t for t in distill_bench.targets(results) if "pipeline" in t["name"]][0]
    assert target["met"] and target["detail"].startswith("(b) TorchScript bf16: 5.00x")
    table = distill_bench.markdown(results, DistillBenchConfig(data_root=data_root))
    assert "| a | TorchScript int8 | 84.90% | 500 | 6.25x | 0.31 (depends on the batch) |  |" in table
    assert "| b | TorchScript bf16 | 84.20% | 400 | 5.00x | 0 (same answers) | yes |" in table
    assert "| a | HF pipeline, eager fp32 | 85.00% | 80 | 1.00x |  |  |" in table
    distill_bench.plot(results, tmp_path / "distill.png")
    assert (tmp_path / "distill.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    distill_bench.plot({**results, "rt-polarity": {}}, tmp_path / "none.png")  # nothing measured: no empty figure
    assert not (tmp_path / "none.png").exists()


def test_labels_of_points_crowding_one_accuracy_line_do_not_cover_each_other():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    # two models sharing an accuracy, their variants a few percent apart in speed (rt-polarity's (b) and (d) on
    # 2026-11-29): the labels' own places collide
    speeds = {"b": {"fp32": 325.8, "onnx-fp32": 403.0}, "d": {"fp32": 171.4, "int8": 376.0, "bf16": 326.9,
                                                          "onnx-fp32": 253.3, "onnx-int8": 316.0}}
    found = [{"label": f"{part} {variant}", "variant": variant, "texts_per_s": speed, "accuracy": 0.8321}
             for part, variants in speeds.items() for variant, speed in variants.items()]
    fig, ax = plt.subplots(figsize=(10, 7))
    ax.scatter([p["texts_per_s"] for p in found], [100 * p["accuracy"] for p in found])
    ax.set_xscale("log")
    ax.set_xlim(20, 1200)
    ax.set_ylim(82, 92)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    distill_bench.label(ax, found, renderer)
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == sorted(p["label"] for p in found)
    assert not [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    plt.close(fig)
