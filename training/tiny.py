"""Tiny random models and export bundles, built offline in seconds: the stand-ins that tests, the soak
benchmark and the GPU check serve when no real model is needed.

Models are randomly initialised encoders with tokenizers trained on the fly, as the transformers test suite
does: real architectures and real tokenizer types. Bundles are in the format `training.export` writes: a
frozen TorchScript trace (export's own `trace`), a saved tokenizer, config.json with the label map,
index_to_name.json and a model card carrying model.pt's SHA-256. Their predictions are meaningless.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer
from tokenizers.processors import BertProcessing, RobertaProcessing
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DistilBertConfig,
    DistilBertForMaskedLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)

from handlers.answers import sigmoid, softmax
from handlers.bundle import MULTI, THRESHOLDS_KEY
from handlers.long_texts import CARD_KEY as LONG_TEXTS
from handlers.runtimes import RUNTIMES
from handlers.tokenization import encode
from training import onnx_build, out_of_scope
from training.bundle_writer import write_bundle
from training.export_formats import OUTPUTS, LogitsOnly, compile_package, trace
from training.features import with_features
from training.report import predict_outputs

CORPUS = [
    "the film was a delight from start to finish",
    "a dull, lifeless script and wooden acting",
    "my card has not arrived yet, what should I do",
    "how do I top up my account with a bank transfer",
    "I love this phone, the battery lasts forever",
    "terrible service, I want a refund now",
    "an ordinary story told with extraordinary care",
    "why was my payment declined at the shop",
] * 4


def _fast(tokenizer_object, **special):
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, **special)


def tiny_roberta(out_dir: Path, vocab_size: int = 400) -> Path:
    """Save a 2-layer random RoBERTa and a byte-level BPE tokenizer in Hugging Face format."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=special)
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tok = _fast(bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                mask_token="<mask>", cls_token="<s>", sep_token="</s>", model_max_length=64)
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=66, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, type_vocab_size=1,
    )
    RobertaForMaskedLM(config).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def tiny_distilbert(out_dir: Path, vocab_size: int = 300) -> Path:
    """Save a 2-layer random DistilBERT and a WordPiece tokenizer in Hugging Face format."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    wp.post_processor = BertProcessing(("[SEP]", wp.token_to_id("[SEP]")), ("[CLS]", wp.token_to_id("[CLS]")))
    tok = _fast(wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                mask_token="[MASK]", model_max_length=64)
    config = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    DistilBertForMaskedLM(config).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


MAX_LENGTH = 64
_BUILDERS = {"roberta": tiny_roberta, "distilbert": tiny_distilbert}


def make_tiny_bundle(out_dir: Path, arch: str = "roberta", labels: Sequence[str] = ("negative", "positive"),
                     variant: str = "fp32", thresholds: Sequence[float] | None = None,
                     runtime: str = "torchscript", detector: str | None = None,
                     long_texts: dict | None = None) -> Path:
    """Write a complete bundle for a tiny random `arch` classifier into `out_dir` and return it.
    variant "bf16" casts the weights before tracing, as `training.export --dtype bf16` does; `thresholds`
    (one per label) makes it a multi-label bundle, as training writes one; runtime "onnxruntime" writes the
    same model as a fused model.onnx, as `training.export --format onnx` does, runtime "aotinductor" as a model.pt2
    compiled for the CPU, as `training.export --format pt2` does (about 15 s of compiling). `detector` (mahalanobis or
    max_prob): the model also outputs its features, as export's bundles do, and the bundle carries an
    out-of-scope detector fitted on CORPUS (each text labelled by its position), as training fits one.
    `long_texts`: the card's long-text section (handlers/long_texts.py), written as given (None: none, truncate)."""
    if arch not in _BUILDERS:
        raise ValueError(f"arch must be one of {sorted(_BUILDERS)}, got {arch!r}")
    if variant not in ("fp32", "bf16") or (runtime != "torchscript" and variant != "fp32"):
        raise ValueError(f"variant must be fp32 or bf16 (onnxruntime, aotinductor: fp32), got {variant!r} for {runtime}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {sorted(RUNTIMES)}, got {runtime!r}")
    out_dir = Path(out_dir)
    labels = list(labels)
    with tempfile.TemporaryDirectory() as base_dir:
        torch.manual_seed(0)  # the random encoder and head are the same on every build
        _BUILDERS[arch](base_dir)
        model = AutoModelForSequenceClassification.from_pretrained(
            base_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)}, attn_implementation="eager",
        ).eval()
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
    # Padding in the example input keeps the mask path in the trace (an all-ones mask can be folded away).
    example = encode(tokenizer, ["short", "a somewhat longer example text for tracing"], MAX_LENGTH)
    if variant == "bf16":
        model = model.to(torch.bfloat16)
    model.config.architectures = [type(model).__name__]  # the base was saved as a masked LM
    if thresholds is not None:
        model.config.problem_type = MULTI
        setattr(model.config, THRESHOLDS_KEY, list(thresholds))
    card = {"max_length": MAX_LENGTH, "base_model": f"tiny-random-{arch}", "task": "text-classification",
            "source": "training.tiny", "variant": variant, "runtime": runtime,
            **({LONG_TEXTS: long_texts} if long_texts is not None else {})}
    module, outputs = (LogitsOnly(model).eval(), ("logits",)) if detector is None else (with_features(model), OUTPUTS)
    with tempfile.TemporaryDirectory() as scratch:
        model_file = Path(scratch) / RUNTIMES[runtime].model_file
        if runtime == "onnxruntime":  # export's own exporter and fusion
            onnx_build.export(module, example, Path(scratch) / "exported.onnx", outputs)
            onnx_build.fuse(Path(scratch) / "exported.onnx", model_file)
        elif runtime == "aotinductor":  # export's own torch.export and AOTInductor compile
            card = {**card, "device": "cpu", "aotinductor": compile_package(module, example, model_file, MAX_LENGTH, "cpu")}
        else:  # export's own tracing, device rewrite included
            torch.jit.save(trace(module, example), str(model_file))
        detector_file = None
        if detector is not None:
            fitted = _tiny_detector(module, tokenizer, labels, thresholds, detector)
            detector_file, card = fitted.save(Path(scratch)), {**card, "outputs": list(outputs),
                                                               "out_of_scope": fitted.section()}
        write_bundle(out_dir, model_file, tokenizer, model.config, labels, card, force=True, detector=detector_file)
    return out_dir


def _tiny_detector(module, tokenizer, labels: list, thresholds, kind: str):
    """A detector fitted as training fits one, with CORPUS as both training and validation texts."""
    texts = sorted(set(CORPUS))
    probs, features = predict_outputs(module, tokenizer, texts, MAX_LENGTH, 8,
                                      activation=sigmoid if thresholds is not None else softmax)
    ids = np.arange(len(texts)) % len(labels)
    targets = ids if thresholds is None else np.eye(len(labels), dtype=int)[ids]
    every = np.ones(len(texts), dtype=bool)
    validation = out_of_scope.Texts(probs, features, every, every, ~every)
    return out_of_scope.fit(kind, features, targets, validation, np.arange(len(labels)), None, 0.95)[0]
