"""A .pt2 a user hands us must not run code: booby-trapped archives are refused, one line, and
the trap never fires.

torch.export.load unpickles some archive members with weights_only=False, unpickles custom
constants with plain pickle and loads AOTInductor libraries; each trap below uses one of those
routes, and a control proves the trap is real (it fires under torch's own loader).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from mvdeploy.backends.capture import capture, program_bytes
from mvdeploy.backends.torch import load_program
from mvdeploy.cli import run
from mvdeploy.errors import ArtifactError
from mvdeploy.models import create_model

SENTINEL_ENV = "MVDEPLOY_TEST_TRAP"
SAMPLE = Path(__file__).resolve().parents[1] / "mvdeploy" / "sample_images" / "chelsea.jpg"


class Trap:
    """Unpickling this creates the file named in the environment: proof that code ran."""

    def __reduce__(self):
        return (os.system, (f'touch "${SENTINEL_ENV}"',))


def _torch_saved_trap() -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": Trap()}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory) -> Path:
    model = create_model("mobilevit_xxs", patch_sizes="B", num_classes=4)
    path = tmp_path_factory.mktemp("pt2") / "clean.pt2"
    path.write_bytes(program_bytes(capture(model, torch.randn(1, 3, 64, 64))))
    return path


@pytest.fixture
def sentinel(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "code-ran"
    monkeypatch.setenv(SENTINEL_ENV, str(path))
    return path


def _rezip(clean: Path, out: Path, replace: dict[str, bytes]) -> Path:
    """The clean archive with members replaced (or added), as an attacker would re-zip it."""
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename not in replace:
                dst.writestr(info, src.read(info.filename))
        for name, data in replace.items():
            dst.writestr(name, data)
    return out


def _pickled_weight(clean: Path, member: str | None = None) -> dict[str, bytes]:
    """The first weight switched to use_pickle, its payload a trapped pickle (optionally
    renamed to `member`, e.g. a name that looks like a plain file)."""
    with zipfile.ZipFile(clean) as src:
        config_name = next(n for n in src.namelist() if n.endswith("_weights_config.json"))
        config = json.loads(src.read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    if member:
        first["path_name"] = member
    folder = config_name.rsplit("/", 1)[0]
    return {config_name: json.dumps(config).encode(),
            f"{folder}/{first['path_name']}": _torch_saved_trap()}


def _traps(clean: Path) -> dict[str, dict[str, bytes]]:
    return {
        "sample inputs": {"archive/data/sample_inputs/model.pt": _torch_saved_trap()},
        "pickled weight": _pickled_weight(clean),
        "pickled weight named like a plain file": _pickled_weight(clean, "archive_version"),
        "aotinductor library": {"archive/data/aotinductor/model/model.so": b"\x7fELF"},
    }


@pytest.mark.parametrize("route", ["sample inputs", "pickled weight",
                                   "pickled weight named like a plain file"])
def test_the_trap_is_real_under_torchs_own_loader(clean_pt2, tmp_path, sentinel, route):
    trapped = _rezip(clean_pt2, tmp_path / "trapped.pt2", _traps(clean_pt2)[route])
    with contextlib.suppress(Exception):  # the load may fail after the trap fired: fine
        torch.export.load(str(trapped))
    assert sentinel.exists()  # so the tests below prove something


@pytest.mark.parametrize("route", ["sample inputs", "pickled weight",
                                   "pickled weight named like a plain file",
                                   "aotinductor library"])
def test_a_booby_trapped_pt2_is_refused_and_runs_no_code(clean_pt2, tmp_path, sentinel, capsys,
                                                         route):
    trapped = _rezip(clean_pt2, tmp_path / "trapped.pt2", _traps(clean_pt2)[route])
    with pytest.raises(ArtifactError, match="mvdeploy does not"):
        load_program(trapped)
    for command in (["inspect", str(trapped)], ["predict", str(trapped), str(SAMPLE)]):
        capsys.readouterr()
        assert run(command) == 2
        printed = capsys.readouterr()
        lines = (printed.out + printed.err).strip().splitlines()
        assert len(lines) == 1 and ("could run code" in lines[0] or "would run" in lines[0])
        assert "Traceback" not in printed.out + printed.err
    assert not sentinel.exists()


def test_a_clean_pt2_still_loads_and_inspects(clean_pt2, capsys):
    program = load_program(clean_pt2)
    assert program.module()(pixel_values=torch.zeros(1, 3, 64, 64))["logits"].shape == (1, 4)
    assert run(["inspect", str(clean_pt2), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"][0]["shape"] == [1, 3, 64, 64]


def test_a_pt2_that_is_not_a_zip_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip at all")
    assert run(["inspect", str(bad)]) == 2
    printed = capsys.readouterr()
    assert "not a .pt2 archive" in printed.out + printed.err
