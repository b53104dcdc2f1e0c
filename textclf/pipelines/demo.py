"""The quick start, `textclf demo` (and `make demo`): the whole product end to end on the embedded model and
dataset. Fine-tune on a bounded, stratified subset (a few minutes on 2 cores), export TorchScript in the fastest
dtype this CPU multiplies in hardware (fp32 if that variant is refused), build the archive, start TorchServe
(loopback, token authorization on), register the model as its archive plans it, and show live predictions
over plain REST (what curl sends) and through the Python client, then how to query and stop the server."""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from handlers.device import fastest_cpu_dtype
from textclf.core.errors import UserError
from textclf.core.options import option, run
from textclf.torchserve import ops
from textclf.torchserve.archive import ArchiveConfig, build_archive
from textclf.torchserve.keys import bearer
from textclf.torchserve.ops import Target
from training import export, train
from training.data_sources import BUILTIN_TWEETS
from training.rundir import RunDir
from training.summary import summary

log = logging.getLogger(__name__)

EXAMPLES = [
    "@united thank you for the amazing service, the crew was great!",
    "@USAirways three hours late and nobody tells us anything. Worst airline ever.",
    "Google is testing its driverless cars in Austin this week.",
]


def held_out_examples(run_dir: Path | None, per_label: int = 1, max_chars: int = 110) -> list[tuple[str, str | None]]:
    """(text, true label) pairs from the run's test split: texts the model never trained on, one per label.

    The first short rows without links, in the split's (seeded) order, so every demo shows the same ones.
    Without a run or its saved split, a few handwritten texts with no true label.
    """
    run = RunDir(run_dir) if run_dir is not None else None
    if run is None or not run.test_file.is_file():
        return [(text, None) for text in EXAMPLES]
    test = run.read_test()
    # A multi-label split holds a sequence of labels per row: shown and grouped as "a|b".
    test = test.assign(label=[v if isinstance(v, str) else "|".join(v) for v in test["label"]])
    plain = test[(test["text"].str.len() <= max_chars) & ~test["text"].str.contains("http", regex=False)]
    return [(row.text, row.label) for _, group in plain.groupby("label", sort=True)
            for row in group.head(per_label).itertuples()][:10]


@dataclass
class DemoConfig:
    """The quick start: fine-tune, export, archive, serve, register and predict, end to end."""

    data: str = option("training data (as `textclf train --data`)", BUILTIN_TWEETS)
    model: str | None = option("model to fine-tune (default: the embedded all-MiniLM-L6-v2)", None)
    run_dir: Path = option("the run directory (replaced)", Path("runs/demo"))
    name: str = option("model name", "classifier")
    version: str = option("model version", "1.0")
    workers: int | None = option("workers to register (default: the archive's plan)", None)
    max_train_samples: int = option("a bounded, stratified training subset keeps the demo to a few minutes", 3000)
    max_eval_samples: int = option("validation and test texts evaluated", 1500)
    epochs: float = option("most training epochs", 2)


def step(number: int, what: str) -> None:
    log.info("==> %d/6 %s", number, what)


def main(config: DemoConfig) -> str:
    run_dir, bundle = config.run_dir, config.run_dir / "export"
    step(1, f"fine-tune {config.model or 'the embedded all-MiniLM-L6-v2'} on {config.data}")
    shutil.rmtree(run_dir, ignore_errors=True)
    train.main(train.TrainConfig(output_dir=str(run_dir), data=config.data, model=config.model or train.EMBEDDED_MODEL,
                                 max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples,
                                 epochs=config.epochs))
    log.info("\n%s", summary(run_dir))
    dtype = fastest_cpu_dtype()
    step(2, f"export TorchScript ({dtype}) and verify it against the eager model")
    try:
        export.main(export.ExportConfig(run_dir=str(run_dir), output_dir=str(bundle), dtype=dtype, force=True))
    except UserError as e:
        if dtype == "fp32":
            raise
        log.warning("%s export refused (%s); exporting fp32", dtype, e)
        export.main(export.ExportConfig(run_dir=str(run_dir), output_dir=str(bundle), force=True))
    step(3, f"build model-archive/store/{config.name}-{config.version}.mar")
    build_archive(ArchiveConfig(bundle=bundle, name=config.name, version=config.version, force=True))
    step(4, "start TorchServe (config.properties: loopback, token authorization on)")
    target = Target()
    ops.main(ops.StopConfig(target=target))
    ops.main(ops.ServeConfig(target=target))
    step(5, f"register {config.name} v{config.version} as its archive plans it")
    ops.main(ops.RegisterConfig(name=config.name, version=config.version, workers=config.workers, target=target))
    step(6, "live predictions")
    return "\n".join(filter(None, [predictions(config.name, config.version, run_dir, target), versus_baselines(run_dir)]))


def versus_baselines(run_dir: Path) -> str:
    """The model's test figure next to the majority class's and TF-IDF + logistic regression's, as training
    judged them, and why it loses where it does; '' for a run without baselines."""
    judged = RunDir(run_dir).read_metrics()["test"].get("baseline_verdict")
    if not judged:
        return ""
    return "\n".join([f"\nBaselines: {judged['summary']}", *(f"  {line}" for line in judged["lines"])])


def predictions(name: str, version: str, run_dir: Path | None, target: Target) -> str:
    """Predictions of held-out texts over plain REST and the Python client, and how to query the server."""
    ep = target.endpoints()
    client = target.client()
    key = client.keys.key("inference")
    url = f"{ep.inference_url}/predictions/{name}"
    examples = held_out_examples(run_dir)
    texts = [text for text, _ in examples]
    source = "held-out test texts (true label in brackets)" if examples[0][1] is not None else "example texts"
    lines = [f"== REST: POST {url} (token from {ep.key_file.name}), {source}"]
    for text, truth in examples:
        r = requests.post(url, json={"text": text}, headers=bearer(key), timeout=60)
        r.raise_for_status()
        answer = r.json()
        said = "|".join(answer["labels"]) if "labels" in answer else answer["label"]  # multi-label: the label set
        lines.append(f"  {said:>9} {answer['score']:.3f}  {f'[{truth}] ' if truth is not None else ''}{text}")

    lines.append(f"\n== Python client: TorchServeClient.predict('{name}', texts=[...], top_k=2)")
    for text, answer in zip(texts, client.predict(name, texts=texts, top_k=2), strict=True):
        lines.append(f"  {json.dumps(answer['scores'])}  {text[:40]}...")

    body = shlex.quote(json.dumps({"text": "What a wonderful day!"}))
    textclf = command_path()
    lines.append(f"""
TorchServe is still running with {name} v{version} (token authorization on, loopback only).
Query it yourself:
  {textclf} predict --name {name} --text 'What a wonderful day!'
  KEY=$({textclf} keys)
  curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
       -d {body} {url}
  {textclf} models --name {name}
Stop it with: {textclf} stop   (or make stop)""")
    return "\n".join(lines)


def command_path() -> str:
    """How to call `textclf` from here: the environment's script, relative when it is below the working folder,
    so the printed commands work without activating the environment."""
    script = Path(sys.executable).with_name("textclf")
    if not script.is_file():
        return "textclf"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)


def command(argv=None, prog="python -m textclf.pipelines.demo") -> int:
    return run(main, DemoConfig, argv, prog=prog, show=str)


if __name__ == "__main__":
    sys.exit(command())
