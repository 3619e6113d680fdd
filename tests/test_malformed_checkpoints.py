"""A checkpoint's malformed config.json or preprocessor_config.json is one line naming the file,
the key and what is expected (exit 2), never a Python exception (issue 27, item 6)."""

from __future__ import annotations

import json
import shutil

import pytest

from mvdeploy.cli import run
from mvdeploy.errors import CheckpointError
from mvdeploy.fixtures import checkpoint_dir
from mvdeploy.models.weights import load_pretrained
from tests.helpers import needs

CASES = [  # (file, change, what the message says)
    ("config.json", {"id2label": {"zero": "0", "one": "1"}}, "id2label key 'zero'"),
    ("config.json", {"hidden_sizes": 5}, "hidden_sizes=5 must be a list of integers"),
    ("config.json", {"expand_ratio": "x"}, "expand_ratio='x' must be a positive number"),
    ("preprocessor_config.json", {"rescale_factor": "abc"},
     "rescale_factor='abc' must be a positive number"),
    ("preprocessor_config.json", {"do_normalize": True},
     "do_normalize is true, so image_mean must be 3 numbers"),
    ("preprocessor_config.json", {"size": {"shortest_edge": 0}}, "size={'shortest_edge': 0} "
     "must be a positive size"),
    ("preprocessor_config.json", {"resample": "bilinear"}, "resample=bilinear is not supported"),
    ("preprocessor_config.json", {"image_std": [1, 0, 1], "image_mean": [0, 0, 0],
                                  "do_normalize": True}, "std > 0"),
]


def _broken(tmp_path, name: str, change: dict):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir(), folder)
    conf = json.loads((folder / name).read_text())
    (folder / name).write_text(json.dumps({**conf, **change}))
    return folder


@pytest.mark.parametrize(("name", "change", "says"), CASES, ids=[c[2][:24] for c in CASES])
def test_a_malformed_key_is_one_line_naming_file_and_key(tmp_path, name, change, says):
    folder = _broken(tmp_path, name, change)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(folder)
    message = str(info.value)
    assert message.startswith(str(folder / name)) and says in message
    assert "\n" not in message


@needs("onnx")
def test_on_the_command_line_it_is_exit_2_without_a_traceback(tmp_path, capsys):
    folder = _broken(tmp_path, "config.json", {"hidden_sizes": 5})
    code = run(["export", "--weights", str(folder), "-r", "64", "-f", "onnx",
                "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "hidden_sizes=5 must be a list of integers" in err
    assert "Traceback" not in err and "internal error" not in err
