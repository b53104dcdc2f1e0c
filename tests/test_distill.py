"""training.distill on the tiny runs: the loss is the formula, a layer-copied student holds exactly the chosen
teacher layers, teacher logits are computed once, a RoBERTa-BPE teacher distils into a WordPiece student, and
noisy copies of the training texts are answered by the teacher and trained on."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.tiny_runs import one_torch_thread, roberta_config
from textclf.core.errors import UserError
from textclf.core.options import parse_config
from training import distill
from training.distill import DistillConfig, distillation_loss, student_from_layers
from training.rundir import RunDir
from training.summary import summary


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def teacher(roberta_trained):
    """The shared tiny RoBERTa run (2 layers, BPE tokenizer) and the data it was trained on."""
    return roberta_trained


def student_config(teacher, out, **overrides) -> DistillConfig:
    train = roberta_config(out, teacher / "data", overrides.pop("model", "embedded"))
    settings = {"teacher": str(teacher / "run"), "train": train}
    return DistillConfig(**{**settings, **overrides})


def test_loss_is_the_formula_on_a_hand_computed_batch():
    student = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1])
    alpha, t = 0.25, 2.0

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    ce = -(math.log(softmax([2, 0])[0]) + math.log(softmax([0, 1])[1])) / 2
    kl = 0.0
    for s, te in (([2, 0], [1, 1]), ([0, 1], [0, 3])):
        p, q = softmax([v / t for v in te]), softmax([v / t for v in s])
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=False)) / 2
    expected = alpha * ce + (1 - alpha) * t * t * kl
    assert distillation_loss(student, teacher, labels, alpha, t).item() == pytest.approx(expected, rel=1e-6)
    plain = torch.nn.functional.cross_entropy(student, labels)
    assert distillation_loss(student, teacher, labels, 1.0, t).item() == pytest.approx(plain.item(), rel=1e-6)


def test_trainer_loss_uses_the_teacher_only_where_rows_carry_it():
    from training.problems import SingleLabel

    loss = distill.DistilledLoss(SingleLabel(), alpha=0.5, temperature=2.0)
    logits, labels = torch.tensor([[1.0, -1.0]]), torch.tensor([1])
    assert loss.loss(logits, labels).item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    rows = torch.tensor([[1.0, 0.0, 5.0]])  # label 1, teacher logits [0, 5]
    assert loss.loss(logits, rows).item() == pytest.approx(
        distillation_loss(logits, rows[:, 1:], labels, 0.5, 2.0).item())


def test_layer_pairs_meet_the_teacher_at_the_same_relative_depth():
    assert distill.layer_pairs(3, 6) == [(0, 1), (1, 3), (2, 5)]
    assert distill.layer_pairs(1, 2) == [(0, 1)]
    assert distill.layer_pairs(2, 2) == [(0, 0), (1, 1)]


def test_hidden_state_loss_is_the_mean_square_over_real_tokens():
    teacher = [torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]]])]
    student = [torch.zeros(1, 3, 2), torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])]
    mask = torch.tensor([[1, 1, 0]])  # the last token is padding: its distance of 9 must not count
    expected = (1 + 1 + 4 + 4) / (2 * 2)
    assert distill.hidden_state_loss(student, teacher, mask, [(0, 1)]).item() == pytest.approx(expected)


def test_hidden_state_term_vanishes_for_a_full_copy_and_adds_for_fewer_layers(teacher, tmp_path):
    """The objective adds hidden_weight x the hidden-state term to the logit loss; a student holding every
    teacher layer is the teacher, so the term is zero; one layer of two is pulled towards the teacher's last."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from handlers.tokenization import encode
    from training.problems import SingleLabel

    model_dir = RunDir(teacher / "run").model_dir
    big = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = dict(encode(AutoTokenizer.from_pretrained(model_dir), ["a long good film", "bad"], 32))
    targets = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.0, 1.0, 0.0, 0.0]])
    objective = distill.DistilledLoss(SingleLabel(), 0.5, 2.0, teacher=big, hidden_weight=3.0)
    for layers in ([0, 1], [1]):
        student = AutoModelForSequenceClassification.from_pretrained(
            student_from_layers(model_dir, layers, tmp_path / str(layers))).eval()
        with torch.no_grad():
            loss, outputs = objective.forward_loss(student, dict(batch), targets)
            states = student(**batch, output_hidden_states=True).hidden_states
            taught = big(**batch, output_hidden_states=True).hidden_states
        hidden = distill.hidden_state_loss(states, taught, batch["attention_mask"], distill.layer_pairs(len(layers), 2))
        assert loss.item() == pytest.approx((objective.loss(outputs.logits, targets) + 3.0 * hidden).item(), rel=1e-5)
        assert outputs.hidden_states is None
        assert (hidden.item() == 0) == (layers == [0, 1])
    plain = distill.DistilledLoss(SingleLabel(), 0.5, 2.0)  # validation rows and hidden_weight 0: no teacher runs
    assert plain.forward_loss(student, dict(batch), targets[:, 0].long())[0].item() == pytest.approx(
        SingleLabel().loss(student(**batch).logits, targets[:, 0].long()).item(), rel=1e-5)


def test_student_layers_hold_exactly_the_chosen_teacher_layers(teacher, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model_dir = RunDir(teacher / "run").model_dir
    out = student_from_layers(model_dir, [1], tmp_path / "student")
    big = AutoModelForSequenceClassification.from_pretrained(model_dir).state_dict()
    small = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    layer_keys = [k for k in small if ".layer.0." in k]
    assert layer_keys and all(torch.equal(small[k], big[k.replace(".layer.0.", ".layer.1.")]) for k in layer_keys)
    others = [k for k in small if ".layer." not in k]
    assert others and all(torch.equal(small[k], big[k]) for k in others)  # embeddings and head
    assert (out / "tokenizer.json").is_file()
    with pytest.raises(UserError, match=r"the teacher has layers 0\.\.1"):
        student_from_layers(model_dir, [0, 5], tmp_path / "bad")


def test_layer_student_trains_with_cached_teacher_logits(teacher, tiny_roberta_dir, tmp_path, monkeypatch):
    out = tmp_path / "student"
    metrics = distill.main(student_config(teacher, out, student_layers=[0]))
    run = json.loads((out / "run.json").read_text())
    # teacher_model: the model the teacher was fine-tuned from (its run.json's base_model), the tiny RoBERTa here.
    assert run["distillation"] == {"teacher": str(teacher / "run"), "teacher_model": str(tiny_roberta_dir),
                                   "alpha": 0.5, "temperature": 2.0, "student_layers": [0],
                                   "noisy_copies": 0, "hidden_weight": 1.0, "hidden_layer_pairs": [[0, 1]]}
    assert "accuracy" in metrics["test"]
    caches = list((out / "distill").glob("teacher-logits-*.npy"))
    assert len(caches) == 1 and np.load(caches[0]).shape[1] == 3
    assert "student vs teacher" in summary(out)

    def teacher_run_again(*args, **kwargs):
        raise AssertionError("the teacher ran again although its logits were cached")

    monkeypatch.setattr("training.report.predict_probs", teacher_run_again)
    cached = distill.teacher_logits(RunDir(teacher / "run"), ["unused"], caches[0])
    assert np.array_equal(cached, np.load(caches[0]))


def test_hidden_state_student_trains_and_records_its_layer_pairs(teacher, tmp_path, monkeypatch):
    real, terms = distill.hidden_state_loss, []

    def spy(student_states, teacher_states, mask, pairs):
        terms.append((len(student_states), len(teacher_states), pairs))
        return real(student_states, teacher_states, mask, pairs)

    monkeypatch.setattr(distill, "hidden_state_loss", spy)
    out = tmp_path / "hidden"
    metrics = distill.main(student_config(teacher, out, student_layers=[0], hidden_weight=2.0))
    run = json.loads((out / "run.json").read_text())
    assert run["distillation"]["hidden_weight"] == 2.0 and run["distillation"]["hidden_layer_pairs"] == [[0, 1]]
    # Every training step (not the evaluations) compared the student's one layer with the teacher's last.
    assert len(terms) == metrics["train"]["steps"] and all(t == (2, 3, [(0, 1)]) for t in terms)


def test_bpe_teacher_distils_into_a_wordpiece_student(teacher, tmp_path, tiny_distilbert_dir, monkeypatch):
    real, soft_targets = distill.distillation_loss, []

    def spy(student, teacher_logits, labels, alpha, temperature, weight=None):
        soft_targets.append((tuple(teacher_logits.shape), alpha, temperature))
        return real(student, teacher_logits, labels, alpha, temperature, weight)

    monkeypatch.setattr(distill, "distillation_loss", spy)
    out = tmp_path / "wordpiece"
    distill.main(student_config(teacher, out, model=str(tiny_distilbert_dir), alpha=0.3, temperature=3.0))
    # Every training step saw the teacher's 3 logits per row, computed with the teacher's BPE tokenizer.
    assert soft_targets and all(shape[1] == 3 and (a, t) == (0.3, 3.0) for shape, a, t in soft_targets)
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == "distilbert"
    assert json.loads((out / "run.json").read_text())["distillation"]["student_layers"] is None


def test_noisy_copies_are_seeded_and_leave_short_texts_alone():
    texts = ["a film that is neither funny nor moving and far too long", "too short", "great fun"]
    copies = distill.noisy_copies(texts, 2, seed=13)
    assert copies == distill.noisy_copies(texts, 2, seed=13) != distill.noisy_copies(texts, 2, seed=14)
    assert len(copies) == 6 and copies[1::3] == ["too short"] * 2 and copies[2::3] == ["great fun"] * 2
    long = [copies[0], copies[3]]
    assert all(c != texts[0] and set(c.split()) <= set(texts[0].split()) for c in long)


def test_noisy_copies_are_answered_by_the_teacher_and_trained_on(teacher, tmp_path, monkeypatch):
    real, answered = distill.teacher_logits, []

    def spy(run, texts, cache):
        answered.append(list(texts))
        return real(run, texts, cache)

    monkeypatch.setattr(distill, "teacher_logits", spy)
    out = tmp_path / "noisy"
    metrics = distill.main(student_config(teacher, out, student_layers=[0], noisy_copies=2))
    texts, noisy = answered
    assert noisy == distill.noisy_copies(texts, 2, seed=13)
    run = json.loads((out / "run.json").read_text())
    assert run["distillation"]["noisy_copies"] == 2
    assert metrics["train"]["examples"] == run["plan"]["train_rows"] == 3 * len(texts)
    caches = list((out / "distill").glob("teacher-logits-*.npy"))
    noisy_cache = [p for p in caches if p.name.endswith("-noisy2-seed13.npy")]
    assert len(caches) == 2 and len(noisy_cache) == 1 and np.load(noisy_cache[0]).shape == (2 * len(texts), 3)


def test_config_is_parsed_with_every_training_option(teacher, tmp_path):
    config = parse_config(DistillConfig, ["--teacher", str(teacher / "run"), "--output-dir", str(tmp_path / "s"),
                                          "--data", str(teacher / "data"), "--student-layers", "0,1",
                                          "--max-steps", "3", "--alpha", "0.7"])
    assert config.student_layers == [0, 1] and config.alpha == 0.7 and config.train.max_steps == 3


@pytest.mark.parametrize("overrides, message", [
    ({"alpha": 1.5}, "--alpha must be between 0 and 1"),
    ({"temperature": 0}, "--temperature must be positive"),
    ({"student_layers": [0], "model": "some/model"}, "not both"),
    ({"student_layers": [0, 0]}, "distinct layers"),
    ({"noisy_copies": -1}, "--noisy-copies"),
    ({"student_layers": [0], "hidden_weight": -1.0}, "--hidden-weight must be 0 or more"),
    ({"hidden_weight": 1.0}, "needs a student built with --student-layers"),
])
def test_config_validation(teacher, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        student_config(teacher, tmp_path / "s", **overrides)


def test_hidden_state_term_is_on_by_default_for_a_layer_copied_student_only(teacher, tmp_path):
    layered = student_config(teacher, tmp_path / "s", student_layers=[0])
    assert layered.hidden_weight == distill.LAYER_STUDENT_HIDDEN_WEIGHT == 1.0
    assert student_config(teacher, tmp_path / "s", student_layers=[0], hidden_weight=0.0).hidden_weight == 0.0
    assert student_config(teacher, tmp_path / "s").hidden_weight == 0.0  # a --model student


def test_teacher_must_be_a_finished_run(tmp_path, teacher):
    with pytest.raises(UserError, match="run.json: missing"):
        DistillConfig(teacher=str(tmp_path), train=roberta_config(tmp_path / "s", teacher / "data", "embedded"))
