"""The one writer of export bundles (handlers/bundle.py describes the layout): the model card, and the bundle
itself, written into a sibling temporary folder and renamed into place, so a reader never sees half a bundle and
a failed export leaves nothing. training.export and training.tiny's test bundles both write through it."""
from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import tempfile
import time
from pathlib import Path

from handlers import bundle
from handlers.bundle import SINGLE
from handlers.drift_bins import PROFILE_FILE
from handlers.long_texts import CARD_KEY as LONG_TEXTS
from training.export_formats import FORMATS, OUTPUTS, RUNTIME_PACKAGES
from training.rundir import RunDir


def build_card(run: dict, run_dir: Path, results: dict, *, fmt: str, quantize: str, dtype: str, variant: str) -> dict:
    """The model card of a bundle exported from `run_dir` (export's settings, its checks' `results`)."""
    train_metrics = RunDir(run_dir).read_metrics()
    packages = ("torch", "transformers", "tokenizers", *RUNTIME_PACKAGES[fmt])
    return {
        "base_model": run["base_model"], "max_length": run["max_length"], "variant": variant,
        "runtime": FORMATS[fmt].runtime,
        "quantize": quantize, "dtype": dtype, "inputs": ["input_ids", "attention_mask"], "outputs": list(OUTPUTS),
        "problem_type": run.get("problem_type", SINGLE), "data": run["data"],
        "training": {"test": {k: v for k, v in train_metrics.get("test", {}).items() if isinstance(v, (int, float))},
                     "train": train_metrics.get("train"),
                     # The majority class and TF-IDF + logistic regression on the same test split (training.baselines).
                     "baselines": train_metrics.get("test", {}).get("baselines")},
        "export": results, "versions": {p: md.version(p) for p in packages},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # The long-text policy the run was evaluated with, which serving applies (runs before it: truncate).
        **({LONG_TEXTS: run[LONG_TEXTS]} if run.get(LONG_TEXTS) else {}),
    }


def write_bundle(out: Path, model_file: Path, tokenizer, model_config, labels: list[str], card: dict,
                 force: bool, profile: dict | None = None, detector: Path | None = None) -> None:
    """Write into a sibling temp dir, then rename: readers never see half a bundle. `model_file` is copied in
    under the name the card's runtime reads; `profile` is the reference profile drift checks compare with;
    `detector` the out-of-scope detector's file, which the card's `out_of_scope` section describes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        shutil.copyfile(model_file, tmp / bundle.model_file(card))
        if detector is not None:
            shutil.copyfile(detector, tmp / bundle.OUT_OF_SCOPE_FILE)
            card = {**card, "out_of_scope": {**card["out_of_scope"], "sha256": bundle.sha256_file(detector)}}
        if profile is not None:
            (tmp / PROFILE_FILE).write_text(json.dumps(profile, indent=2) + "\n")
        tokenizer.save_pretrained(tmp)
        model_config.save_pretrained(tmp)
        bundle.write_metadata(tmp, labels, card)
        bundle.check(tmp)  # read back what serving will read: the same checks as the archiver and the handler
        if out.exists() and force:
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


