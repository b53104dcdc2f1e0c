"""Is live traffic still what the model was tested on? Compare a served model's counters with its bundle's
reference profile.

    python -m tsclient.drift --reference runs/demo/export --name classifier [--version 1.0]
                             [--since logs/drift-snapshot.json] [--save-snapshot logs/drift-snapshot.json]
                             [--out drift.json]                       (make drift NAME= VERSION= EXPORT=)

The live window is read from the server's Prometheus endpoint (the handler's counters, handlers/metrics.py):
everything since the workers started, or since a snapshot saved by an earlier check (--since), so a cron job
can judge each day's traffic on its own. The reference is the test split as the exported model answered it
(reference_profile.json in the bundle, also inside the .mar). Per feature (predicted label, confidence,
tokens per text, truncated texts, unknown tokens): population stability index, its level (PSI below 0.1 stable,
0.1-0.25 watch, above 0.25 alert) and a chi-square p-value. Prints a table; exits 1 on an alert so cron or CI
can page, 0 otherwise, also when there is too little traffic to judge (it says so).
"""
from __future__ import annotations

import json
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cli import Failure, UserError, option, run
from handlers.profile import PROFILE_FILE
from tsclient import drift_stats
from tsclient.ops import Target

SERIES = re.compile(r"^(\w+)\{(.*)\}\s+([0-9.eE+-]+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class DriftAlert(Failure):
    """At least one feature's PSI is above the alert threshold (exit 1)."""


@dataclass
class DriftConfig:
    """Compare a served model's live traffic with its bundle's reference profile (exit 1 on a drift alert)."""

    reference: Path = option("the model's export bundle, its .mar, or a reference_profile.json")
    name: str = option("the model's registered name")
    version: Optional[str] = option("only this version's traffic (default: every version of the name)", None)
    since: Optional[Path] = option("judge only the traffic after this snapshot (written by --save-snapshot)", None)
    save_snapshot: Optional[Path] = option("save the live counters here, for the next check's --since", None)
    out: Optional[Path] = option("write the comparison as JSON here", None)
    target: Target = option("the server", default_factory=Target)

    def __post_init__(self):
        if not Path(self.reference).exists():
            raise UserError(f"--reference {self.reference}: not found (an export bundle, a .mar or a profile JSON)")
        if self.since is not None and not Path(self.since).is_file():
            raise UserError(f"--since {self.since}: no such snapshot (write one with --save-snapshot)")


def read_reference(path: Path) -> dict:
    path = Path(path)
    try:
        if path.is_dir():
            return json.loads((path / PROFILE_FILE).read_text())
        if path.suffix == ".mar":
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read(PROFILE_FILE))
        return json.loads(path.read_text())
    except (FileNotFoundError, KeyError):
        raise UserError(f"{path}: no {PROFILE_FILE}; re-export the model (bundles exported before drift checks "
                        "have none)") from None
    except (json.JSONDecodeError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: unreadable reference profile ({e})") from None


def series(text: str):
    """(metric, {label: value}, value) for every labelled sample of Prometheus text."""
    for line in text.splitlines():
        match = SERIES.match(line)
        if match:
            yield match.group(1), dict(LABEL.findall(match.group(2))), float(match.group(3))


def parse_metrics(text: str, name: str, version: Optional[str] = None) -> dict:
    """The handler's counters for one model (and version) from Prometheus text, as a profile (handlers/profile.py)."""
    live = {"texts": 0, "labels": {}, "confidence": {}, "tokens": {}, "truncated": 0, "token_total": 0,
            "unknown_tokens": 0}
    into = {"PredictionsPerLabel": ("labels", "Label"), "ConfidenceBucket": ("confidence", "Bucket"),
            "TokensBucket": ("tokens", "Bucket")}
    totals = {"TextsAnswered": "texts", "TruncatedTexts": "truncated", "TokensSeen": "token_total",
              "UnknownTokens": "unknown_tokens"}
    for metric, labels, value in series(text):
        if metric not in into and metric not in totals:
            continue
        if labels.get("ModelName") != name or (version is not None and labels.get("ModelVersion") != version):
            continue
        if metric in into:
            key, dimension = into[metric]
            live[key][labels[dimension]] = live[key].get(labels[dimension], 0) + int(value)
        else:
            live[totals[metric]] += int(value)
    return live


def minus(live: dict, earlier: dict) -> dict:
    """The traffic after `earlier`; None if a counter went down (a worker restarted since: counters reset)."""
    out = {}
    for key, value in live.items():
        if isinstance(value, dict):
            out[key] = {k: v - earlier.get(key, {}).get(k, 0) for k, v in value.items()}
            if any(v < 0 for v in out[key].values()) or set(earlier.get(key, {})) - set(value):
                return None
        else:
            out[key] = value - earlier.get(key, 0)
            if out[key] < 0:
                return None
    return out


def table(result: dict) -> str:
    lines = [f"{'feature':<15} {'PSI':>7} {'level':<7} {'chi2 p':>9}"]
    for feature, r in result["features"].items():
        lines.append(f"{feature:<15} {r['psi']:>7.3f} {r['level']:<7} {r['chi2_p']:>9.2g}")
    lines.append(f"verdict: {result['verdict']} ({result['live_texts']} live texts vs {result['reference_texts']} "
                 f"reference; at least {result['min_texts']} needed to judge)")
    return "\n".join(lines)


def main(config: DriftConfig) -> dict:
    import requests

    reference = read_reference(config.reference)
    url = f"{config.target.endpoints().metrics_url}/metrics"
    try:
        text = requests.get(url, timeout=10).text
    except requests.RequestException as e:
        raise Failure(f"cannot read {url}: {type(e).__name__}; is the server running (make serve)?") from None
    live = parse_metrics(text, config.name, config.version)
    if config.save_snapshot:
        Path(config.save_snapshot).parent.mkdir(parents=True, exist_ok=True)
        Path(config.save_snapshot).write_text(json.dumps(live, indent=2) + "\n")
    window = live
    if config.since:
        window = minus(live, json.loads(Path(config.since).read_text()))
        if window is None:
            print(f"counters went down since {config.since} (a worker restarted): judging all traffic since then",
                  file=sys.stderr)
            window = live
    result = drift_stats.compare(reference, window)
    result.update(model=config.name, version=config.version)
    print(table(result))
    if config.out:
        Path(config.out).write_text(json.dumps(result, indent=2) + "\n")
    if result["verdict"] == "alert":
        worst = [f"{f} PSI {r['psi']:.2f}" for f, r in result["features"].items() if r["level"] == "alert"]
        raise DriftAlert(f"drift alert for {config.name}: {', '.join(worst)}")
    return result


if __name__ == "__main__":
    sys.exit(run(main, DriftConfig, prog="python -m tsclient.drift"))
