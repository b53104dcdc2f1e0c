"""An archive built by the project as it was before the package layout (cli/, tsclient/, handlers/review.py and
handlers/profile.py; commit OLD_LAYOUT) still registers on today's server and answers exactly as an archive
of the same bundle built today. The old archiver and its handler files are taken from git history, so what is
served is byte for byte what that commit shipped."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from textclf.core import paths
from textclf.torchserve.archive import ArchiveConfig, build_archive
from training.tiny import make_tiny_bundle

pytestmark = pytest.mark.live
OLD_LAYOUT = "8adc0b2"  # the last commit with tsclient/ and cli/ at the top level
# The last commit before the response cache, explanations, long-text policies and the Open Inference Protocol: its
# handler has one module for parsing and errors and none for scoring; today's archive of the bundle answers alike.
BEFORE_CACHE = "c179d2f"
LABELS = ("negative", "neutral", "positive")
TEXTS = ["the film was a delight", "why was my payment declined at the shop", "a dull, lifeless script"]


def old_checkout(dest: Path, commit: str = OLD_LAYOUT,
                 folders: tuple = ("cli", "tsclient", "handlers", "model-archive")) -> Path:
    """The files of `commit` that build an archive, extracted from git history into `dest`."""
    git = ["git", "-C", str(paths.ROOT)]
    if subprocess.run([*git, "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True).returncode:
        pytest.skip(f"git history without commit {commit} (a shallow clone): no old archiver to build with")
    dest.mkdir()
    tar = subprocess.run([*git, "archive", "--format=tar", commit, *folders], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    return dest


@pytest.fixture(scope="module")
def archives(live, tmp_path_factory):
    root = tmp_path_factory.mktemp("old-layout")
    bundle = make_tiny_bundle(root / "bundle", labels=LABELS)
    old = old_checkout(root / "old")
    # The old command line, run from the old checkout: its own cli, tsclient and handlers come first on the path.
    env = {**os.environ, "PYTHONPATH": str(old)}
    built = subprocess.run([sys.executable, "-m", "tsclient.archive", "--bundle", str(bundle), "--name", "old-layout",
                            "--version", "1.0", "--store", str(live.store)], cwd=old, env=env, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    old_mar = live.store / "old-layout-1.0.mar"
    new_mar = build_archive(ArchiveConfig(bundle=bundle, name="new-layout", version="1.0", store=live.store))
    for name, mar in (("old-layout", old_mar), ("new-layout", new_mar)):
        live.rest.register(name, mar.name, initial_workers=1)
    yield old_mar, new_mar
    for name, mar in (("old-layout", old_mar), ("new-layout", new_mar)):
        live.rest.unregister(name, "1.0")
        mar.unlink()  # the session store lists exactly clf-1.0 and clf-2.0 for other tests


def test_the_old_archive_carries_the_old_handler_modules(archives):
    old_mar, new_mar = archives
    with zipfile.ZipFile(old_mar) as z:
        old_files = set(z.namelist())
    with zipfile.ZipFile(new_mar) as z:
        new_files = set(z.namelist())
    assert any(name.endswith("review.py") for name in old_files) and not any(n.endswith("capture.py") for n in old_files)
    assert any(name.endswith("capture.py") for name in new_files)


def test_an_archive_built_before_the_package_layout_answers_as_one_built_today(live, archives):
    old = live.rest.predict("old-layout", texts=TEXTS, top_k=3)
    new = live.rest.predict("new-layout", texts=TEXTS, top_k=3)
    assert len(old) == len(new) == len(TEXTS)
    for a, b in zip(old, new, strict=True):
        assert a["label"] == b["label"] and set(a["scores"]) == set(LABELS)
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-6)


@pytest.fixture(scope="module")
def before_cache(live, tmp_path_factory):
    root = tmp_path_factory.mktemp("before-cache")
    bundle = make_tiny_bundle(root / "bundle", labels=LABELS, detector="mahalanobis")
    old = old_checkout(root / "old", BEFORE_CACHE, ("textclf", "handlers", "model-archive"))
    env = {**os.environ, "PYTHONPATH": str(old)}
    built = subprocess.run([sys.executable, "-m", "textclf.torchserve.archive", "--bundle", str(bundle), "--name",
                            "before-cache", "--version", "1.0", "--store", str(live.store)], cwd=old, env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    old_mar = live.store / "before-cache-1.0.mar"
    new_mar = build_archive(ArchiveConfig(bundle=bundle, name="after-cache", version="1.0", store=live.store))
    for name, mar in (("before-cache", old_mar), ("after-cache", new_mar)):
        live.rest.register(name, mar.name, initial_workers=1)
    yield old_mar
    for name, mar in (("before-cache", old_mar), ("after-cache", new_mar)):
        live.rest.unregister(name, "1.0")
        mar.unlink()


def test_an_archive_built_before_the_cache_answers_as_one_built_today(live, before_cache):
    with zipfile.ZipFile(before_cache) as z:
        assert not any(n.endswith(("cache.py", "scoring.py")) for n in z.namelist())  # the old handler's modules
    for _ in range(2):  # the second time, today's archive answers from its cache
        old = live.rest.predict("before-cache", texts=TEXTS, top_k=3)
        new = live.rest.predict("after-cache", texts=TEXTS, top_k=3)
        for a, b in zip(old, new, strict=True):
            assert (a["label"], a["out_of_scope"]) == (b["label"], b["out_of_scope"])
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-6) and a["in_scope"] == b["in_scope"]
        [a], [b] = (live.rest.predict(name, instances=TEXTS[:1])["predictions"] for name in ("before-cache", "after-cache"))
        assert a["label"] == b["label"] and a["scores"] == pytest.approx(b["scores"], abs=1e-6)
