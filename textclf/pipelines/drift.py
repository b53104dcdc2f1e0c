"""Is live traffic still what the model was tested on? Compare a served model's counters with its bundle's
reference profile.

    python -m textclf.pipelines.drift --reference runs/demo/export --name classifier [--version 1.0]
                             [--since logs/drift-snapshot.json] [--save-snapshot logs/drift-snapshot.json]
                             [--out drift.json]                       (make drift NAME= VERSION= EXPORT=)

The live window is read from the server's Prometheus endpoint (the handler's counters, handlers/metrics.py):
everything since the workers started, or since a snapshot saved by an earlier check (--since), so a cron job
can judge each day's traffic on its own: `--since F --save-snapshot F` compares with the previous run's snapshot
and saves the next one; on the first run, when F does not exist yet, it judges all traffic since the workers
started and starts the series (it says so). Without --version the traffic of every version of the name is
summed (the output names them). The reference is the test split as the exported model answered it
(reference_profile.json in the bundle, also inside the .mar). Per feature (predicted label, confidence,
tokens per text, truncated texts, unknown tokens): population stability index, its level (PSI below 0.1 stable,
0.1-0.25 watch, above 0.25 alert) and a chi-square p-value. Prints a table; exits 1 on an alert so cron or CI
can page, 0 otherwise: also with no live texts in the window (nothing to compare) or too few to judge (it says
which), and 2 for a mistake in the options.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests

from handlers.drift_bins import PROFILE_FILE
from textclf.core.errors import Failure, UserError
from textclf.core.files import write_atomically
from textclf.core.options import option, run
from textclf.pipelines import drift_stats
from textclf.torchserve.ops import Target

log = logging.getLogger(__name__)
SERIES = re.compile(r"^(\w+)\{(.*)\}\s+([0-9.eE+-]+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class DriftAlert(Failure):
    """At least one feature's PSI is above the alert threshold (exit 1)."""


@dataclass
class DriftConfig:
    """Compare a served model's live traffic with its bundle's reference profile. Exit status: 1 on a drift
    alert; 0 when stable or watch, and also when the window has no live texts or too few to judge (nothing to
    compare is not drift: the verdict line says which); 2 for a mistake in the options."""

    reference: Path = option("the model's export bundle, its .mar, or a reference_profile.json")
    name: str = option("the model's registered name")
    version: str | None = option("only this version's traffic (default: the traffic of every version of the name, "
                                 "summed; the output names the versions)", None)
    since: Path | None = option(
        "judge only the traffic after this snapshot (written by --save-snapshot). If it does not exist yet and "
        "--save-snapshot names the same file, the series starts: all traffic since the workers started is judged",
        None)
    save_snapshot: Path | None = option("save the live counters here, for the next check's --since", None)
    out: Path | None = option("write the comparison as JSON here", None)
    target: Target = option("the server", default_factory=Target)

    def __post_init__(self):
        if not Path(self.reference).exists():
            raise UserError(f"--reference {self.reference}: not found (an export bundle, a .mar or a profile JSON)")
        if self.since is not None and not Path(self.since).is_file() and not self.starts_series:
            raise UserError(f"--since {self.since}: no such snapshot (write one with --save-snapshot; "
                            f"`--since {self.since} --save-snapshot {self.since}` starts the series with this check)")

    @property
    def starts_series(self) -> bool:
        """The first check of a `--since F --save-snapshot F` series: F does not exist yet."""
        return (self.since is not None and self.save_snapshot is not None and not Path(self.since).is_file()
                and Path(self.since).resolve() == Path(self.save_snapshot).resolve())


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


def parse_metrics(text: str, name: str, version: str | None = None) -> dict:
    """The handler's counters for one model (and version) from Prometheus text, as a profile (handlers/drift_bins.py)."""
    live = {"texts": 0, "labels": {}, "confidence": {}, "tokens": {}, "truncated": 0, "token_total": 0,
            "unknown_tokens": 0, "out_of_scope": 0}
    into = {"PredictionsPerLabel": ("labels", "Label"), "ConfidenceBucket": ("confidence", "Bucket"),
            "TokensBucket": ("tokens", "Bucket")}
    totals = {"TextsAnswered": "texts", "TruncatedTexts": "truncated", "TokensSeen": "token_total",
              "UnknownTokens": "unknown_tokens", "OutOfScopeTexts": "out_of_scope"}
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


def versions_of(text: str, name: str) -> list[str]:
    """The versions of `name` whose handler counters the server reports (what a check without --version sums)."""
    metrics = {"PredictionsPerLabel", "ConfidenceBucket", "TokensBucket", "TextsAnswered", "TruncatedTexts",
               "TokensSeen", "UnknownTokens"}
    return sorted({labels["ModelVersion"] for metric, labels, _ in series(text)
                   if metric in metrics and labels.get("ModelName") == name and "ModelVersion" in labels})


def read_snapshot(path: Path, name: str, version: str | None) -> dict:
    """A snapshot saved by --save-snapshot, checked to be of the same model and versions."""
    try:
        snapshot = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--since {path}: unreadable snapshot ({e})") from None
    # Snapshots written before these keys existed have neither: nothing to check then.
    saved = (snapshot.get("model", name), snapshot.get("version", version))
    if saved != (name, version):
        raise UserError(f"--since {path} is a snapshot of {scope(*saved)}, not of {scope(name, version)}")
    return snapshot


def write_snapshot(path: Path, live: dict, name: str, version: str | None) -> None:
    """Written whole or not at all: a check killed halfway never leaves half a snapshot."""
    record = {**live, "model": name, "version": version, "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomically(path, [json.dumps(record, indent=2)])


def scope(name: str, version: str | None) -> str:
    return f"{name} version {version}" if version is not None else f"every version of {name}"


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


def traffic_line(result: dict) -> str:
    """Whose traffic was judged, and since when."""
    if result["version"] is not None:
        whose = f"{result['model']} version {result['version']}"
    else:
        summed = ", ".join(result["versions"]) or "none has answered yet"
        whose = f"every version of {result['model']}, summed ({summed}; --version judges one)"
    return f"traffic: {whose}, {result['window']}"


def table(result: dict) -> str:
    lines = []
    if result["features"]:
        lines.append(f"{'feature':<15} {'PSI':>7} {'level':<7} {'chi2 p':>9}")
        for feature, r in result["features"].items():
            lines.append(f"{feature:<15} {r['psi']:>7.3f} {r['level']:<7} {r['chi2_p']:>9.2g}")
    lines.append(traffic_line(result))
    if result["verdict"] == drift_stats.NO_TEXTS:
        lines.append(f"verdict: {result['verdict']}: nothing to compare with the {result['reference_texts']} "
                     "reference texts (not an alert)")
    else:
        lines.append(f"verdict: {result['verdict']} ({result['live_texts']} live texts vs {result['reference_texts']} "
                     f"reference; at least {result['min_texts']} needed to judge)")
    return "\n".join(lines)


def check(config: DriftConfig) -> dict:
    """Read the live counters, save the snapshot if asked, and compare the window with the reference."""
    reference = read_reference(config.reference)
    url = f"{config.target.endpoints().metrics_url}/metrics"
    try:
        text = requests.get(url, timeout=10).text
    except requests.RequestException as e:
        raise Failure(f"cannot read {url}: {type(e).__name__}; is the server running (`textclf serve`)?") from None
    live = parse_metrics(text, config.name, config.version)
    starting = config.starts_series  # before the snapshot below is saved: then the file exists
    # Read before saving: --since and --save-snapshot are usually the same file.
    earlier = read_snapshot(config.since, config.name, config.version) if config.since and not starting else None
    if starting:
        log.info("no snapshot at %s yet: judging all traffic since the workers started; the series starts with the "
                 "snapshot saved now", config.since)
    if config.save_snapshot:
        write_snapshot(config.save_snapshot, live, config.name, config.version)
    window, since = live, "since the workers started"
    if earlier is not None:
        window, since = minus(live, earlier), f"since the snapshot {config.since}" + (
            f" (saved {earlier['saved']})" if "saved" in earlier else "")
        if window is None:
            log.warning("counters went down since %s (a worker restarted and counts from 0 again): judging all "
                        "traffic since the workers started", config.since)
            window, since = live, "since the workers started (they restarted after the snapshot)"
    result = drift_stats.compare(reference, window)
    versions = [config.version] if config.version is not None else versions_of(text, config.name)
    result.update(model=config.name, version=config.version, versions=versions, window=since)
    return result


def main(config: DriftConfig) -> dict:
    result = check(config)
    # Printed here, not through options.run's `show`: the table must appear also when DriftAlert sets exit 1.
    print(table(result), flush=True)
    if config.out:
        Path(config.out).write_text(json.dumps(result, indent=2) + "\n")
    if result["verdict"] == "alert":
        worst = [f"{f} PSI {r['psi']:.2f}" for f, r in result["features"].items() if r["level"] == "alert"]
        raise DriftAlert(f"drift alert for {config.name}: {', '.join(worst)}")
    return result


def command(argv=None, prog="python -m textclf.pipelines.drift") -> int:
    return run(main, DriftConfig, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(command())
