"""Last step of `make demo`: live predictions from the registered model, over plain REST (what curl
sends) and through the Python client, then how to query and stop the server yourself."""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import requests

from cli import option, run
from training.rundir import RunDir
from tsclient.keys import bearer
from tsclient.ops import Target

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
    """Live predictions from a registered model, as `make demo` shows them."""

    name: str = option("model name")
    version: str = option("model version")
    run_dir: Optional[Path] = option("the training run whose held-out test texts to send", None)


def main(config: DemoConfig) -> None:
    name, version, run_dir = config.name, config.version, config.run_dir
    target = Target()
    ep = target.endpoints()
    client = target.client()
    key = client.keys.key("inference")
    url = f"{ep.inference_url}/predictions/{name}"
    examples = held_out_examples(run_dir)
    texts = [text for text, _ in examples]
    source = "held-out test texts (true label in brackets)" if examples[0][1] is not None else "example texts"
    print(f"\n== REST: POST {url} (token from {ep.key_file.name}), {source}")
    for text, truth in examples:
        r = requests.post(url, json={"text": text}, headers=bearer(key), timeout=60)
        r.raise_for_status()
        answer = r.json()
        said = "|".join(answer["labels"]) if "labels" in answer else answer["label"]  # multi-label: the label set
        print(f"  {said:>9} {answer['score']:.3f}  {f'[{truth}] ' if truth is not None else ''}{text}")

    print(f"\n== Python client: TorchServeClient.predict('{name}', texts=[...], top_k=2)")
    for text, answer in zip(texts, client.predict(name, texts=texts, top_k=2)):
        print(f"  {json.dumps(answer['scores'])}  {text[:40]}...")

    body = shlex.quote(json.dumps({"text": "What a wonderful day!"}))
    print(f"""
TorchServe is still running with {name} v{version} (token authorization on, loopback only).
Query it yourself:
  KEY=$(.venv/bin/python -m tsclient.keys)
  curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
       -d {body} {url}
  make predict NAME={name} TEXT='What a wonderful day!'
  make models NAME={name}
Stop it with: make stop""")


if __name__ == "__main__":
    sys.exit(run(main, DemoConfig, prog="python -m tsclient.demo"))
