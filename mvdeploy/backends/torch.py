"""PyTorch: the captured torch.export program saved as .pt2 (the reference other tools can load).

Not an export.formats choice: `export.save_program` writes it beside the other formats.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mvdeploy.backends import FormatSpec, Job, Package, Recipe, Session, tensor_info
from mvdeploy.errors import ArtifactError
from mvdeploy.tensor_names import INPUT_NAME, OUTPUT_NAME


@dataclass(frozen=True)
class TorchOptions:
    """The .pt2 has no options of its own."""


SPEC = FormatSpec(
    name="torch", title="PyTorch (torch.export)", suffix=".pt2", extra="",
    export_needs=(Package("torch", "torch", "model, torch.export capture, eager reference"),),
    run_needs=(Package("torch", "torch", "model, torch.export capture, eager reference"),),
    recipes={"fp32": Recipe("float32 (the captured program)", tolerance="fp32")},
    options=TorchOptions, dynamic_batch=True, selectable=False,
)


def check_installed() -> None:
    """torch is a core dependency."""


def convert(job: Job) -> dict:
    import torch

    from mvdeploy.backends.capture import program_bytes

    job.path.write_bytes(program_bytes(job.captured))
    return {"torch": torch.__version__}


def load(path: Path, *, threads: int | None = None, accelerator: str = "cpu") -> Session:
    import torch

    if threads:
        torch.set_num_threads(threads)
    module = load_program(path).module()

    def infer(x):
        with torch.no_grad():
            (out,) = module(**{INPUT_NAME: x}).values()  # logits, or a mask
            return out

    return Session(prepare=torch.from_numpy, infer=infer, scores=lambda out: out.numpy())


def describe(path: Path) -> dict:
    import torch

    program = load_program(path)
    nodes = [n for n in program.graph.nodes if n.op == "call_function"]
    inputs = [n for n in program.graph.nodes
              if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    outputs = list(program.graph.nodes)[-1].args[0]
    names = list(program.call_spec.out_spec.context or []) or [OUTPUT_NAME]  # the dict's keys
    ranks = [n.meta["val"].dim() for n in program.graph.nodes
             if isinstance(n.meta.get("val"), torch.Tensor)]
    return {
        "inputs": [tensor_info(INPUT_NAME, n.meta["val"].shape, str(n.meta["val"].dtype))
                   for n in inputs],
        "outputs": [tensor_info(name, n.meta["val"].shape, str(n.meta["val"].dtype))
                    for name, n in zip(names, outputs, strict=False)],
        "ops": dict(Counter(str(n.target) for n in nodes).most_common()),
        "max_rank": max(ranks, default=0),
    }





# ---------------------------------------------------------------- reading a .pt2 safely
#
# torch.export.load unpickles parts of the archive with weights_only=False (sample inputs,
# weights or constants stored with use_pickle, the legacy layout's state dict), unpickles
# "custom" and "opaque" constants with plain pickle, and loads AOTInductor shared libraries:
# any of these runs code from the file. So the archive is read into memory once (no second
# read a swapped file could win), every member torch would unpickle is first opened with
# torch's restricted unpickler (weights_only=True, which allows tensors and containers only),
# and members that can only be code are refused. What passes unpickles to the same objects
# under torch's own loader, which then reads the same bytes.

# members torch reads as text or JSON, never unpickles (unless a payload config points at one)
_PLAIN_NAMES = ("archive_format", "archive_version", "byteorder", ".data/version",
                ".data/serialization_id", "version")
_CODE_MARKERS = ("aotinductor/", "custom_obj", "opaque_obj", ".so", ".dylib", ".dll")


def _payloads(archive: zipfile.ZipFile) -> tuple[set[str], set[str]]:
    """(raw, pickled): members the payload configs declare as raw tensor bytes (read with
    as_strided) and as pickles (use_pickle: torch.load with weights_only=False)."""
    raw, pickled = set(), set()
    for name in archive.namelist():
        if not name.endswith(("_weights_config.json", "_constants_config.json")):
            continue
        try:
            config = json.loads(archive.read(name)).get("config", {})
            entries = [(str(m["path_name"]), bool(m.get("use_pickle")))
                       for m in config.values()]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ArtifactError(f"{name} in the archive is not a torch.export payload config: "
                                "the file is damaged; export it again") from None
        folder = name.rsplit("/", 1)[0]
        for path, is_pickle in entries:
            (pickled if is_pickle else raw).add(f"{folder}/{path}")
    return raw - pickled, pickled


def _plain(name: str) -> bool:
    return name.endswith(".json") or any(name == n or name.endswith("/" + n)
                                         for n in _PLAIN_NAMES)


def check_archive(data: bytes, where: object) -> None:
    """Refuse a .pt2 whose loading could run code (see above); one line naming the member."""
    import pickle

    import torch

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ArtifactError(f"{where} is not a .pt2 archive (not a zip file): it is damaged "
                            "or another kind of file") from None
    with archive:
        raw, pickled = _payloads(archive)
        for name in archive.namelist():
            if name.endswith("/") or name in raw or (_plain(name) and name not in pickled):
                continue
            if any(marker in name for marker in _CODE_MARKERS):
                raise ArtifactError(
                    f"{where} holds {name}, code that would run when the file is loaded: "
                    "mvdeploy does not load it (export the model again with mvdeploy export)")
            try:
                torch.load(io.BytesIO(archive.read(name)), map_location="cpu",
                           weights_only=True)
            except pickle.UnpicklingError:
                raise ArtifactError(
                    f"{where} holds pickled Python objects in {name}, which could run code "
                    "when loaded: mvdeploy does not unpickle them (export the model again "
                    "with mvdeploy export)") from None
            except Exception as exc:  # not a pickle torch could read: damaged or foreign
                raise ArtifactError(f"{where}: cannot read {name} from the archive "
                                    f"({type(exc).__name__}): the file is damaged; export "
                                    "it again") from None


def load_program(path: Path):
    """torch.export.load on a .pt2 that `check_archive` has cleared, from the checked bytes."""
    import torch

    data = Path(path).read_bytes()
    check_archive(data, path)
    return torch.export.load(io.BytesIO(data))
