"""The export bundle: one folder (and later one .mar) that serving needs and nothing else.

Layout, written by `training.export` and read by the handler:
    model.pt | model.onnx (input_ids, attention_mask) -> float32 logits [batch, labels], as TorchScript or as
                          ONNX; the card's `runtime` says which (absent: torchscript, as before ONNX bundles)
    config.json           Hugging Face config; `id2label` is the single source of the label names,
                          `problem_type` says single- or multi-label, `label_thresholds` the multi-label decisions,
                          `calibration_temperature` the single-label calibration
    index_to_name.json    generated from config.json for TorchServe tooling; must agree with it
    model_card.json       base model, labels, max_length, metrics, data fingerprint, versions, runtime,
                          and `model_sha256`, which the handler checks before loading the model file
    tokenizer files       whatever `tokenizer.save_pretrained` wrote
    reference_profile.json  predicted labels, confidence, token-length and unknown-token counts on the test split,
                          binned as the worker's metrics are (handlers/drift_bins.py); what drift checks compare with
    out_of_scope.npz      the out-of-scope detector (handlers/out_of_scope.py), described by the card's
                          `out_of_scope` section with its SHA-256; bundles without one are served without detection
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from handlers.runtimes import RUNTIMES

MODEL_FILE, ONNX_FILE = RUNTIMES["torchscript"].model_file, RUNTIMES["onnxruntime"].model_file
DEFAULT_RUNTIME = "torchscript"
CONFIG_FILE = "config.json"
INDEX_TO_NAME_FILE = "index_to_name.json"
CARD_FILE = "model_card.json"
OUT_OF_SCOPE_FILE = "out_of_scope.npz"  # read by handlers/out_of_scope.py
SINGLE, MULTI = "single_label_classification", "multi_label_classification"
# Keys of config.json that training writes next to id2label and serving reads (read_problem, read_temperature).
THRESHOLDS_KEY, TEMPERATURE_KEY = "label_thresholds", "calibration_temperature"
TOKENIZER_CONFIG = "tokenizer_config.json"
# Any one of these holds the vocabulary, depending on the tokenizer family.
VOCAB_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


class BundleError(Exception):
    """The bundle is incomplete or inconsistent; the message says which file and why."""

    exit_code = 2  # the commands report it as a mistake the user can fix (textclf.core.errors)


def labels_from_config(config: dict, where: str = CONFIG_FILE) -> list[str]:
    """Label names in logit order from a Hugging Face config's `id2label`."""
    id2label = config.get("id2label")
    if not id2label:
        raise BundleError(f"{where}: no id2label label map; re-export the model with training.export")
    try:
        ordered = sorted((int(k), str(v)) for k, v in id2label.items())
    except ValueError:
        raise BundleError(f"{where}: id2label keys must be integers, got {list(id2label)[:5]}") from None
    if [i for i, _ in ordered] != list(range(len(ordered))):
        raise BundleError(f"{where}: id2label keys must be 0..{len(ordered) - 1}, got {[i for i, _ in ordered]}")
    names = [name for _, name in ordered]
    if len(set(names)) != len(names):
        raise BundleError(f"{where}: id2label has duplicate label names")
    return names


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: missing from the bundle") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None


def read_labels(bundle_dir: Path) -> list[str]:
    """Labels from config.json, cross-checked against index_to_name.json when present."""
    bundle_dir = Path(bundle_dir)
    labels = labels_from_config(read_json(bundle_dir / CONFIG_FILE), str(bundle_dir / CONFIG_FILE))
    index_file = bundle_dir / INDEX_TO_NAME_FILE
    if index_file.exists():
        index = read_json(index_file)
        if [index.get(str(i)) for i in range(len(labels))] != labels or len(index) != len(labels):
            raise BundleError(f"{index_file}: disagrees with {CONFIG_FILE} id2label")
    return labels


def index_to_name(labels: list[str]) -> dict[str, str]:
    return {str(i): name for i, name in enumerate(labels)}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_card(bundle_dir: Path) -> dict:
    card = read_json(Path(bundle_dir) / CARD_FILE)
    for key in ("labels", "max_length", "model_sha256"):
        if key not in card:
            raise BundleError(f"{Path(bundle_dir) / CARD_FILE}: missing '{key}'")
    return card


def _read_meta(bundle_dir: Path) -> tuple[list[str], dict]:
    """Labels and model card, checked against each other. Raises BundleError."""
    labels = read_labels(bundle_dir)
    card = read_card(bundle_dir)
    if card["labels"] != labels:
        raise BundleError(f"{Path(bundle_dir) / CARD_FILE}: labels {card['labels'][:5]} disagree with {CONFIG_FILE}")
    return labels, card


@dataclass(frozen=True)
class ModelCard:
    """What serving needs from a checked bundle; `raw` is the whole model_card.json."""

    labels: list
    max_length: int
    variant: str  # fp32, bf16 or int8
    runtime: str  # torchscript or onnxruntime
    base_model: str
    model_path: Path
    raw: dict
    problem_type: str = SINGLE
    thresholds: tuple = ()  # multi-label: one decision threshold per label, in label order
    temperature: float = 1.0  # single-label: logits are divided by it before the softmax (calibration)


def check(bundle_dir: Path) -> ModelCard:
    """Every check serving relies on, in one place: labels agree across config.json, index_to_name.json and
    the card; the model file is the one the card was written for; a tokenizer was saved. Raises BundleError.
    The archiver runs it before building (a broken bundle never becomes a .mar) and the handler at load."""
    bundle_dir = Path(bundle_dir)
    labels, card = _read_meta(bundle_dir)
    model_path = _verify_model(bundle_dir, card)
    if card.get("out_of_scope"):
        _verify_file(bundle_dir / OUT_OF_SCOPE_FILE, card["out_of_scope"].get("sha256"))
    _require_tokenizer_files(bundle_dir)
    config = read_json(bundle_dir / CONFIG_FILE)
    problem_type, thresholds = read_problem(config, len(labels), bundle_dir / CONFIG_FILE)
    if card.get("problem_type", problem_type) != problem_type:  # cards before multi-label have none
        raise BundleError(f"{bundle_dir / CONFIG_FILE}: problem_type {problem_type} disagrees with the model card's "
                          f"{card['problem_type']}; re-export the model")
    return ModelCard(labels=labels, max_length=int(card["max_length"]), variant=card.get("variant", "fp32"),
                     runtime=card.get("runtime", DEFAULT_RUNTIME),
                     base_model=card.get("base_model", "model"), model_path=model_path, raw=card,
                     problem_type=problem_type, thresholds=thresholds,
                     temperature=read_temperature(config, bundle_dir / CONFIG_FILE))


def read_temperature(config: dict, where) -> float:
    """config.json's `calibration_temperature`, fitted on validation at training time (absent: 1, uncalibrated)."""
    temperature = config.get(TEMPERATURE_KEY, 1.0)
    # Within the range training fits in (0.05-20): inf would flatten every answer to a uniform softmax.
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0.05 <= temperature <= 20:
        raise BundleError(f"{where}: {TEMPERATURE_KEY} must be a number from 0.05 to 20, got {temperature!r}")
    return float(temperature)


def read_problem(config: dict, n_labels: int, where) -> tuple[str, tuple]:
    """config.json's problem_type (absent: single-label, as Hugging Face reads it) and, for multi-label, its
    `label_thresholds` (absent: 0.5 for every label)."""
    problem_type = config.get("problem_type") or SINGLE
    if problem_type not in (SINGLE, MULTI):
        raise BundleError(f"{where}: problem_type {problem_type!r} is not served (use {SINGLE} or {MULTI})")
    if problem_type == SINGLE:
        return problem_type, ()
    thresholds = config.get(THRESHOLDS_KEY) or [0.5] * n_labels
    if (not isinstance(thresholds, list) or len(thresholds) != n_labels
            or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1 for t in thresholds)):
        raise BundleError(f"{where}: {THRESHOLDS_KEY} must be {n_labels} numbers between 0 and 1, one per label")
    return problem_type, tuple(float(t) for t in thresholds)


def model_file(card: dict, where="the model card") -> str:
    """The model file a card's runtime reads (model.pt for cards written before there was a choice)."""
    runtime = card.get("runtime", DEFAULT_RUNTIME)
    if runtime not in RUNTIMES:
        raise BundleError(f"{where}: runtime {runtime!r} is not served (use one of {', '.join(RUNTIMES)})")
    return RUNTIMES[runtime].model_file


def _verify_model(bundle_dir: Path, card: dict) -> Path:
    """Refuse a model file whose bytes are not the ones the card was written for."""
    model_path = Path(bundle_dir) / model_file(card, Path(bundle_dir) / CARD_FILE)
    _verify_file(model_path, card["model_sha256"])
    return model_path


def _verify_file(path: Path, expected) -> None:
    if not path.exists():
        raise BundleError(f"{path}: missing from the bundle")
    actual = sha256_file(path)
    if actual != expected:
        raise BundleError(f"{path}: SHA-256 {actual[:12]}... does not match the model card's {str(expected)[:12]}...; "
                          "the file was modified or corrupted")


def _require_tokenizer_files(bundle_dir: Path) -> None:
    """Fail with a clear message instead of letting AutoTokenizer guess or reach for the network."""
    if not (bundle_dir / TOKENIZER_CONFIG).is_file():
        raise BundleError(f"{bundle_dir / TOKENIZER_CONFIG}: missing; the bundle has no saved tokenizer")
    if not any((bundle_dir / name).is_file() for name in VOCAB_FILES):
        raise BundleError(f"{bundle_dir}: no tokenizer vocabulary (expected one of {', '.join(VOCAB_FILES)})")


def write_metadata(bundle_dir: Path, labels: list[str], card: dict) -> None:
    """Write index_to_name.json and model_card.json (with the model file's hash) next to an existing model file
    (model.pt, or the one the card's `runtime` names)."""
    bundle_dir = Path(bundle_dir)
    card = dict(card, labels=labels, model_sha256=sha256_file(bundle_dir / model_file(card)))
    (bundle_dir / INDEX_TO_NAME_FILE).write_text(json.dumps(index_to_name(labels), indent=2) + "\n")
    (bundle_dir / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
