"""textclf.torchserve.ops without a server: the archive's plan on register and scale, `make scale` waiting for READY,
what register and a locked server's refusal say, and `predict --file` (reading, chunks, order, output)."""
from __future__ import annotations

import json
import logging
import re
import zipfile

import pytest
import yaml

from textclf.torchserve import ops
from textclf.torchserve.archive import read_plan
from textclf.torchserve.errors import TorchServeError


class FakeClient:
    """Answers at once; describe reports READY workers one poll later each (as TorchServe can)."""

    def __init__(self, ready_after: list[int], model_url: str = "clf-1.0.mar"):
        self.ready_after, self.model_url, self.calls = list(ready_after), model_url, []

    def register(self, name, url, **params):
        self.calls.append(("register", name, url, params))
        return {"status": f"Model {name} registered"}

    def scale(self, name, version, min_workers, max_workers, synchronous):
        self.calls.append(("scale", name, version, min_workers, max_workers, synchronous))
        return {"status": "Processing worker updates..."}

    def describe(self, name, version=None):
        ready = self.ready_after.pop(0) if len(self.ready_after) > 1 else self.ready_after[0]
        return [{"modelUrl": self.model_url, "workers": [{"status": "READY"}] * ready + [{"status": "UNLOADING"}]}]


def write_mar(store, name="clf", version="1.0", **plan):
    """An archive as far as ops reads it: a manifest and the model-config.yaml with its plan."""
    store.mkdir(exist_ok=True)
    path = store / f"{name}-{version}.mar"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", "{}")
        z.writestr("model-config.yaml", yaml.safe_dump(plan))
    return path


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


def target_with(client, store):
    target = ops.Target()
    target.client = lambda: client
    target.model_store = lambda: store
    return target


PLAN = {"minWorkers": 1, "maxWorkers": 2, "batchSize": 16, "maxBatchDelay": 5, "responseTimeout": 90}


def test_read_plan(store):
    plan = read_plan(write_mar(store, **PLAN))
    assert (plan.min_workers, plan.max_workers, plan.batch_size, plan.max_batch_delay, plan.response_timeout) == (
        1, 2, 16, 5, 90)


def test_register_starts_the_archives_min_workers_with_its_batching(store):
    write_mar(store, **PLAN)
    client = FakeClient([1])
    answer = ops._register(ops.RegisterConfig("clf", "1.0", target=target_with(client, store)))
    assert client.calls == [("register", "clf", "clf-1.0.mar", {
        "initial_workers": 1, "batch_size": 16, "max_batch_delay": 5, "response_timeout": 90, "synchronous": True})]
    assert answer == {"status": 'Model "clf" Version: 1.0 registered with 1 worker(s) READY', "workers": 1}


def test_register_workers_scales_to_that_many(store):
    """`make register WORKERS=2` once registered the archive's minWorkers (1): TorchServe's minWorkers wins over
    initial_workers. It now scales to the count asked for and waits for it."""
    write_mar(store, **PLAN)
    client = FakeClient([1, 2])
    answer = ops._register(ops.RegisterConfig("clf", "1.0", workers=2, target=target_with(client, store)))
    assert [c[0] for c in client.calls] == ["register", "scale"]
    assert client.calls[0][3]["initial_workers"] == 2 and client.calls[1] == ("scale", "clf", "1.0", 2, 2, True)
    # TorchServe's own answer said "registered with 1 initial workers" while 2 ran: the READY ones are counted.
    assert answer == {"status": 'Model "clf" Version: 1.0 registered with 2 worker(s) READY', "workers": 2}


def test_register_waits_for_the_archives_workers_to_be_ready(store):
    write_mar(store, **PLAN)
    client = FakeClient([0, 0, 1])
    assert ops._register(ops.RegisterConfig("clf", "1.0", target=target_with(client, store)))["workers"] == 1
    assert client.ready_after == [1]


@pytest.mark.parametrize("make_config", [
    lambda target: ops.RegisterConfig("clf", "1.0", workers=3, target=target),
    lambda target: ops.ScaleConfig("clf", 3, "1.0", target=target),
])
def test_more_workers_than_planned_are_refused_before_asking_the_server(store, make_config):
    write_mar(store, **PLAN)
    client = FakeClient([1])
    with pytest.raises(ops.OpsError, match=r"clf-1\.0\.mar plans at most 2 worker\(s\).*--max-workers 3"):
        ops.main(make_config(target_with(client, store)))
    assert [c[0] for c in client.calls] == []


def test_a_corrupt_archive_is_named_before_registration(store):
    store.mkdir()
    (store / "clf-1.0.mar").write_bytes(b"PK\x03\x04 truncated")
    client = FakeClient([1])
    with pytest.raises(ops.OpsError, match="not a readable zip archive"):
        ops._register(ops.RegisterConfig("clf", "1.0", target=target_with(client, store)))
    assert client.calls == []


def test_scale_returns_once_every_worker_asked_for_is_ready(store):
    write_mar(store, **PLAN)
    client = FakeClient([1, 1, 1, 2])
    assert ops._scale(ops.ScaleConfig("clf", 2, "1.0", target=target_with(client, store))) == {
        "status": "Processing worker updates..."}
    assert client.calls == [("scale", "clf", "1.0", 2, 2, True)] and client.ready_after == [2]


def test_scale_names_the_workers_that_never_became_ready(store):
    write_mar(store, **PLAN)
    with pytest.raises(ops.OpsError, match=r"clf: 1 of 2 workers READY after 0 s; see logs/model_log.log"):
        ops._scale(ops.ScaleConfig("clf", 2, "1.0", target=target_with(FakeClient([1]), store)), ready_timeout_s=0.2)


def test_locked_mode_refusal_says_what_is_refused_and_what_still_works(store):
    class Locked(FakeClient):
        def register(self, name, url, **params):
            raise TorchServeError(405, "Requested method is not allowed, please refer to API document.",
                                  "MethodNotAllowedException")

    write_mar(store, **PLAN)
    with pytest.raises(TorchServeError) as e:
        ops.main(ops.RegisterConfig("clf", "1.0", target=target_with(Locked([1]), store)))
    assert (e.value.status, e.value.kind) == (405, "MethodNotAllowedException")
    assert str(e.value) == ("TorchServe 405 MethodNotAllowedException: Requested method is not allowed, please refer to "
                            "API document: the server runs in locked mode (model API off: config.locked.properties), "
                            "so models cannot be registered or unregistered; scaling workers and set-default still "
                            "work. `textclf stop`, then `textclf serve`, starts it in managed mode")
    assert "scaled" not in ops.LOCKED_HINT  # scaling is allowed in locked mode (tests/live/test_locked_mode.py)


def test_cli_help_and_mistakes(capsys):
    with pytest.raises(SystemExit) as info:
        ops.command(["register", "--help"])
    assert info.value.code == 0 and "--workers" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        ops.command(["scale", "--name", "clf", "--workers", "-1"])
    assert info.value.code == 2 and capsys.readouterr().err.strip() == "error: --workers must be an integer >= 0, got -1"


def test_server_errors_are_one_line_exit_1(tmp_path, capsys):
    """`make serve` refusing to start (here: a config without a model store) says why on one line."""
    config = tmp_path / "config.properties"
    config.write_text("inference_address=http://127.0.0.1:1\n")
    assert ops.command(["serve", "--config", str(config), "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no model_store property" in err


# ---- predict --file -----------------------------------------------------------------------------------------------
class Scoring(FakeClient):
    """Answers each text with its label ({"label": text}) in requests of at most `max_texts`, the REST client's
    attribute; a text of `refuse` is answered as the handler refuses an invalid one."""

    def __init__(self, max_texts: int = 64, refuse: str | None = None):
        super().__init__([1])
        self.max_texts, self.refuse, self.sizes = max_texts, refuse, []

    def predict(self, name, text=None, *, texts=None, version=None, top_k=None):
        assert text is None and len(texts) <= self.max_texts
        self.sizes.append(len(texts))
        if self.refuse in texts:
            raise TorchServeError(400, f"texts[{texts.index(self.refuse)}] is not valid Unicode", "invalid_text")
        return [{"label": t, "version": version, "top_k": top_k} for t in texts]


def texts_file(tmp_path, suffix: str, texts: list[str]):
    path = tmp_path / f"texts{suffix}"
    if suffix == ".csv":
        path.write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    else:
        path.write_text("\n".join(texts) + "\n\n")  # blank lines at the end are not texts
    return path


TEXTS = [f"text number {i}, with a comma" for i in range(150)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".txt"])
def test_predict_file_answers_every_text_in_order_in_chunks(tmp_path, store, suffix, caplog):
    client = Scoring(max_texts=64)
    path, out = texts_file(tmp_path, suffix, TEXTS), tmp_path / "answers" / "out.jsonl"
    config = ops.PredictConfig("clf", file=path, output=out, version="2.0", top_k=1, target=target_with(client, store))
    with caplog.at_level(logging.INFO, logger="textclf.torchserve.ops"):
        result = ops.main(config)
    assert result == {"status": f"150 texts of {path} classified", "output": str(out)}
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert answers == [{"label": t, "version": "2.0", "top_k": 1} for t in TEXTS]
    assert client.sizes == [64, 64, 22] and f"{path}: 150 of 150 texts classified" in caplog.text
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # no temporary file left


def test_predict_file_without_output_prints_json_lines(tmp_path, store):
    path = texts_file(tmp_path, ".txt", ["über", "naïve"])
    result = ops.main(ops.PredictConfig("clf", file=path, target=target_with(Scoring(), store)))
    assert ops.show(result) == ('{"label": "über", "version": null, "top_k": null}\n'
                                '{"label": "naïve", "version": null, "top_k": null}')
    assert ops.show({"a": 1}) == '{\n  "a": 1\n}'  # every other verb: indented JSON


def test_predict_file_follows_a_limit_the_client_learned(tmp_path, store):
    class Learning(Scoring):
        def predict(self, name, text=None, *, texts=None, version=None, top_k=None):
            self.max_texts = 40  # what the REST client does on a 413 stating a smaller limit
            answers = []
            for i in range(0, len(texts), 40):
                answers += super().predict(name, texts=texts[i: i + 40])
            return answers

    client = Learning(max_texts=64)
    result = ops.main(ops.PredictConfig("clf", file=texts_file(tmp_path, ".csv", TEXTS), target=target_with(client, store)))
    assert [json.loads(line)["label"] for line in result] == TEXTS
    assert client.sizes == [40, 24, 40, 40, 6]


@pytest.mark.parametrize("suffix, content, says", [
    (".csv", 'id,text\n1,"fine"\n2,\n', "line 3: empty text"),
    (".csv", 'id,text\n1,"fine"\n2\n', "line 3: the text ('text') is missing"),
    (".csv", 'id,text\n1,fine, really\n', "line 2: more fields than the header's 2"),
    (".csv", 'id,body\n1,fine\n', "no column 'text' (columns: id, body); choose one with --text-column"),
    (".jsonl", '{"text": "fine"}\n\n{"text": "also"}\n', "line 2: an empty line"),
    (".jsonl", '{"text": "fine"}\n{"text": 3}\n', "line 2: the text ('text') is not a string but int"),
    (".jsonl", '{"text": "fine"}\n[1]\n', "line 2: a JSON list"),
    (".jsonl", '{"text": "fine"}\n{"text": "\\ud800"}\n', "line 2: not valid Unicode (lone surrogate at character 0)"),
    (".txt", "fine\n  \nalso\n", "line 2: empty text"),
    (".txt", "\n\n", "no texts"),
])
def test_a_bad_row_is_named_before_anything_is_sent(tmp_path, store, suffix, content, says):
    path = tmp_path / f"texts{suffix}"
    path.write_text(content)
    client, out = Scoring(), tmp_path / "out.jsonl"
    with pytest.raises(ops.OpsError) as e:
        ops.main(ops.PredictConfig("clf", file=path, output=out, target=target_with(client, store)))
    assert str(e.value).startswith(str(path)) and says in str(e.value)
    assert client.sizes == [] and not out.exists()


def test_a_text_the_server_refuses_is_named_by_its_line_and_nothing_is_written(tmp_path, store):
    texts = TEXTS[:100]
    client, out = Scoring(max_texts=64, refuse=texts[70]), tmp_path / "out.jsonl"
    out.write_text("the previous answers\n")
    path = texts_file(tmp_path, ".txt", texts)
    with pytest.raises(TorchServeError, match=rf"^TorchServe 400 invalid_text: {path} line 71: is not valid Unicode$"):
        ops.main(ops.PredictConfig("clf", file=path, output=out, target=target_with(client, store)))
    assert out.read_text() == "the previous answers\n"  # left as it was: no half-written answers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "texts.txt"]


def test_a_csv_text_may_span_lines_and_hold_any_unicode(tmp_path, store):
    path = tmp_path / "texts.csv"
    path.write_text('text,label\n"two\nlines",a\nline\u2028separator,b\n', encoding="utf-8")
    assert ops.read_texts(path) == (["two\nlines", "line\u2028separator"], ["line 3", "line 4"])
    spreadsheet = tmp_path / "bom.csv"
    spreadsheet.write_bytes("\ufefftext\nhello\n".encode())
    assert ops.read_texts(spreadsheet)[0] == ["hello"]


@pytest.mark.parametrize("kwargs, says", [
    ({}, "give --text or --file (exactly one)"),
    ({"text": "hi", "file": "FILE"}, "give --text or --file (exactly one)"),
    ({"text": "hi", "output": "out.jsonl"}, "--output goes with --file"),
    ({"file": "texts.parquet"}, "expected a .csv, .jsonl, .txt file"),
    ({"file": "missing.csv"}, "no such file"),
    ({"file": "FILE", "text_column": "body"}, "--text-column is for .csv and .jsonl files"),
    ({"file": "FILE", "output": "FILE"}, "is the --file itself"),
])
def test_predict_options_are_checked(tmp_path, kwargs, says):
    path = texts_file(tmp_path, ".txt", ["hi"])
    kwargs = {k: str(path) if v == "FILE" else (str(tmp_path / v) if k in ("file", "output") else v)
              for k, v in kwargs.items()}
    with pytest.raises(ops.OpsError, match=re.escape(says)):
        ops.PredictConfig("clf", **kwargs)
