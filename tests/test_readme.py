"""The commands of README.md and the docs pages, in the order a new user meets them, on a fresh
clone.

The pages are read in one fixed order: README.md, then DOC_PAGES below (the order README.md's
documentation table lists them), as if a reader went through them one after the other; each
command is reported as `file:line`. Every line of a ```bash block is a command a reader may
paste. Two checks:

- always (fast): each mvdeploy command parses; what it reads exists in the clone or was written
  by an earlier command (on this page or an earlier one); and no command writes where an earlier
  one did unless it says --force (two README examples once shared an output folder, so the
  second one stopped with exit 2).
- with MVDEPLOY_README_RUN=1 (about 15 minutes): each command runs, in order, in a copy of the
  repository's tracked files, against a Hugging Face cache laid out by the test (no network),
  and exits 0.

A block right after `<!-- readme-order: not run (why) -->` is checked but not run: the digits
and segmentation fixtures' retraining (it rewrites the shipped checkpoint), the full patch-size
study and the peer study.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from mvdeploy.errors import MvdeployError
from tests.helpers import APPLE_PREPROCESSOR, lay_out_hub_cache

REPO = Path(__file__).resolve().parents[1]
# the docs pages after README.md, in reading order: a page's commands may read what an earlier
# page's wrote (quantisation.md grades on the digits accuracy.md writes). Every docs/*.md is here.
DOC_PAGES = ("docs/export.md", "docs/python.md", "docs/apps.md", "docs/accuracy.md",
             "docs/quantisation.md", "docs/benchmark.md", "docs/model.md", "docs/checkpoints.md",
             "docs/architecture.md", "docs/testing.md", "docs/roadmap.md", "docs/reference.md")
PAGES = ("README.md", *DOC_PAGES)
NOT_RUN = "<!-- readme-order: not run"
SETUP = ({"python3", "-m", "venv"}, {"pip", "install"}, {"python", "-m", "pytest"},
         {".ci/install_clients"})
HUB_IDS = {"apple/mobilevit-xx-small": "mobilevit_xxs", "apple/mobilevit-small": "mobilevit_s"}


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    file: str  # one of PAGES
    line: int  # in that file
    runs: bool  # False in a block marked "not run"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def page_commands(page: str) -> list[Command]:
    """Every command in one page's bash blocks, in order; `a && b` is two commands."""
    text = (REPO / page).read_text()
    commands = []
    for block in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M):
        before = text[:block.start()].rstrip().splitlines()[-1]
        first_line = text[:block.start()].count("\n") + 2
        body = block.group(1).replace("\\\n", " ")  # continuation lines
        for offset, line in enumerate(body.splitlines()):
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv and not any(words <= set(argv) for words in SETUP) and argv[0] != ".":
                    commands.append(Command(tuple(argv), page, first_line + offset,
                                            not before.startswith(NOT_RUN)))
    return commands


def readme_commands() -> list[Command]:
    """The commands of README.md and then of each of DOC_PAGES, in that order."""
    return [command for page in PAGES for command in page_commands(page)]


def _norm(path: str) -> PurePosixPath:
    return PurePosixPath(os.path.normpath(path))


@dataclass
class Effects:
    writes: list[PurePosixPath]  # folders or files a second writer would collide with
    produces: list[PurePosixPath]  # files a later command may read
    reads: list[PurePosixPath]
    force: bool = False


def _export_effects(args: list[str]) -> Effects:
    """What `mvdeploy export args` writes, from the CLI's own parsing and config resolution."""
    from mvdeploy.backends import spec
    from mvdeploy.cli import _export_overrides, app
    from mvdeploy.pipeline.config import load_config, parse_override
    from mvdeploy.pipeline.exporter import artifact_stem

    params = app.commands["export"].make_context("export", list(args)).params
    config, sets, force = params.pop("config"), params.pop("sets"), params.pop("force")
    for unused in ("threads", "as_json"):
        params.pop(unused)
    overrides = _export_overrides(**params)
    overrides.update(parse_override(s) for s in sets)
    cfg = load_config(config, overrides)
    out, stem = _norm(cfg.export.out), artifact_stem(cfg)
    folders = [out / fmt for fmt in cfg.export.formats]
    writes = folders + ([out / f"{stem}.pt2"] if cfg.export.save_program else [])
    produces = [folder / f"{stem}{spec(folder.name).suffix}" for folder in folders]
    weights = cfg.model.weights
    reads = [_norm(p) for p in (config, weights) if p and p not in HUB_IDS]
    return Effects(writes, produces + writes, reads, force)


def _bench_effects(args: list[str]) -> Effects:
    from mvdeploy.cli import app

    params = app.commands["bench"].make_context("bench", list(args)).params
    if params["compare"]:
        return Effects([], [], [_norm(p) for p in params["compare"]])
    if params["report_from"]:  # redraws beside the results it reads
        return Effects([], [], [_norm(params["report_from"])])
    out = _norm(params["out"] or "bench_out")
    reads = [_norm(params["suite"])] if params["suite"] else []
    return Effects([out], [out / "results.json"], reads, params["force"])


def effects(command: Command) -> Effects:
    """What one command reads and writes (relative to the clone's root)."""
    argv = list(command.argv)
    if argv[0] == "python":
        script, *args = argv[1:]
        out = args[args.index("--out") + 1] if "--out" in args else None
        if args[:1] == ["train"]:  # rewrites the shipped checkpoint on purpose
            return Effects([], [], [_norm(script)], force=True)
        return Effects([_norm(out)] if out else [], [_norm(out)] if out else [], [_norm(script)])
    assert argv[0] == "mvdeploy", f"{command}: not an mvdeploy command"
    name, args = argv[1], argv[2:]
    if name == "export":
        return _export_effects(args)
    if name == "bench":
        return _bench_effects(args)
    from mvdeploy.cli import app

    params = app.commands[{"inspect": "inspect", "predict": "predict", "eval": "eval",
                           "snippet": "snippet"}.get(name, name)].make_context(name, args).params
    reads = []
    for key in ("artifact", "artifacts", "images", "data", "weights"):
        value = params.get(key)
        values = value if isinstance(value, tuple) else [value] if value else []
        reads += [_norm(v) for v in values if v not in HUB_IDS]
    return Effects([], [], reads)


def _tracked() -> set[PurePosixPath]:
    """The files of a fresh clone, and the folders above them."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: what is there
        listed = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file()]
    paths = {PurePosixPath(p) for p in listed}
    return paths | {parent for p in paths for parent in p.parents}


def test_readme_commands_read_what_exists_and_never_collide(monkeypatch):
    monkeypatch.chdir(REPO)  # config files and checkpoints are relative to the clone
    tracked, written, produced = _tracked(), {}, set()
    commands = readme_commands()
    assert len(commands) >= 20, "the pages' command blocks were not found"
    for command in commands:
        try:
            effect = effects(command)
        except (MvdeployError, SystemExit, Exception) as exc:
            raise AssertionError(f"{command} does not parse: {exc}") from exc
        for path in effect.reads:
            made = path in produced or any(parent in produced for parent in path.parents)
            assert path in tracked or made, f"{command} reads {path}, which nothing made"
        for path in effect.writes:
            earlier = written.get(path)
            assert earlier is None or effect.force, (
                f"{command} writes {path}, already written at {earlier}")
            written[path] = command.where
        produced.update(effect.produces)


def test_doc_pages_are_every_docs_page():
    """A page missing from DOC_PAGES would have its commands go unchecked."""
    assert len(set(DOC_PAGES)) == len(DOC_PAGES)
    assert set(DOC_PAGES) == {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}


def test_readme_commands_are_found_in_order():
    commands = readme_commands()
    places = [(PAGES.index(c.file), c.line) for c in commands]
    assert places == sorted(places)
    assert commands[0].file == "README.md"
    # the quick start's first export works offline (the shipped fixture), the next is the Hub's
    first, second = [c for c in commands if c.argv[:2] == ("mvdeploy", "export")][:2]
    assert first.file == second.file == "README.md"
    assert "mvdeploy/fixtures/mobilevit_xxs_digits" in first.argv
    assert "apple/mobilevit-xx-small" in second.argv
    assert not [c for c in commands if c.argv[0] in ("pip", "python3")]
    long_suites = ("benchmarks/patch_size_study.toml", "benchmarks/peer_study.toml",
                   "benchmarks/openvino_study.toml", "benchmarks/patch_size_study_v2.toml",
                   "benchmarks/patch_size_study_seg.toml")
    assert [c for c in commands if not c.runs] == [
        c for c in commands if c.argv[1:3] in (("benchmarks/digits_fixture.py", "train"),
                                               ("benchmarks/seg_fixture.py", "train"))
        or any(s in c.argv for s in long_suites)
        or c.argv[1:2] == ("benchmarks/gpu_study.py",)  # needs a CUDA GPU
        or c.argv[2:4] == ("--target", "aihub")]  # needs an AI Hub account


# -- every command, for real -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MVDEPLOY_README_RUN"),
                    reason="runs every command of README.md and DOC_PAGES (about 15 minutes): "
                           "MVDEPLOY_README_RUN=1 python -m pytest tests/test_readme.py")
def test_readme_runs_top_to_bottom(tmp_path, hf_checkpoint):
    clone = tmp_path / "clone"
    for path in sorted(p for p in _tracked() if (REPO / p).is_file()):
        (clone / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / path, clone / path)
    cache = tmp_path / "hub"
    for hub_id, name in HUB_IDS.items():
        _, directory = hf_checkpoint(name)
        lay_out_hub_cache(cache, hub_id, {
            "config.json": directory / "config.json",
            "model.safetensors": directory / "model.safetensors",
            "preprocessor_config.json": APPLE_PREPROCESSOR})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "MVDEPLOY_CACHE": str(tmp_path / "bench_cache")}
    for command in (c for c in readme_commands() if c.runs):
        argv = list(command.argv)
        argv = ([sys.executable, "-m", "mvdeploy.cli", *argv[1:]] if argv[0] == "mvdeploy"
                else [sys.executable, *argv[1:]])
        done = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True,
                              timeout=1800)
        assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stderr[-3000:]}"
