"""Three disjoint image sets for a quantised export: calibration (int8 ranges), selection (what
the float-group search and any other tuning may look at) and report (what validation gates
on, which nothing tunes on).

A search graded on the photos it was tuned on reports what it was tuned to: on input-sensitive
weights, 30 dB "passed" on the tuning photos measured 20 dB on eleven others. So no image is in
two sets, compared by content (a copy in another folder is the same image). Each set comes from
its own folder when given (validate.images, quantize.selection_images,
quantize.calibration_images), else from a shared pool: the bundled photos (with six unlike the
sample photos when a recipe calibrates: data.quantization_pool_paths), or the calibration
folder for the selection set. A pool several sets draw from is dealt out in file order, so each
set gets a share in proportion to its weight until it is full.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mvdeploy.data import find_images, quantization_pool_paths, sample_image_paths
from mvdeploy.errors import ConfigError
from mvdeploy.pipeline.manifest import digest

BUNDLED = "bundled sample photos"
ROLES = ("report", "selection", "calibration")
# shares of a pool the sets split: calibration needs the most images, the other two a few
WEIGHTS = {"report": 1, "selection": 1, "calibration": 2}
# a calibration folder smaller than this keeps its images; the selection set is then dealt
# from the bundled photos
MIN_TO_SHARE = 4
# what a user names to give each set its own folder
FLAGS = {"report": "--images", "selection": "--selection", "calibration": "--calibration"}


@dataclass(frozen=True)
class ImageSet:
    paths: list[Path]
    source: str  # the folder, or BUNDLED
    shared_with: tuple[str, ...] = ()  # the other sets this set's pool was dealt out to

    def info(self) -> dict:
        return {"images": len(self.paths), "source": self.source,
                "split_with": list(self.shared_with), "names": [p.name for p in self.paths]}


@dataclass(frozen=True)
class ImageSets:
    report: ImageSet
    selection: ImageSet | None = None  # only when a format searches
    calibration: ImageSet | None = None  # only when a recipe calibrates

    def to_dict(self) -> dict:
        return {role: s.info() for role in ROLES if (s := getattr(self, role)) is not None}


def _digest(path: Path, cache: dict[Path, str]) -> str:
    if path not in cache:
        cache[path] = digest(path)[1]
    return cache[path]


def split_images(*, report_folder: str, calibration_folder: str, selection_folder: str,
                 calibrate: bool, search: bool, exclude: list[Path] = (),
                 limits: dict[str, int] | None = None) -> ImageSets:
    """The three sets, disjoint by content. `exclude`: images no set may use for tuning (a
    labelled accuracy folder). `limits`: at most this many images per set (report and
    selection; calibration samples its own share later)."""
    limits = limits or {}
    folders = {"report": report_folder, "calibration": calibration_folder if calibrate else "",
               "selection": selection_folder if search else ""}
    wanted = [r for r in ROLES if r == "report" or (r == "calibration" and calibrate)
              or (r == "selection" and search)]
    # a float export reports on the sample photos; a quantised one deals the wider pool
    bundled = quantization_pool_paths() if calibrate else sample_image_paths()
    candidates = {r: find_images(folders[r]) if folders[r] else bundled for r in wanted}
    sources = {r: folders[r] or BUNDLED for r in wanted}
    # tuning data comes from the tuning side, unless it is too small to share
    if (search and not selection_folder and calibrate
            and len(candidates["calibration"]) >= MIN_TO_SHARE):
        candidates["selection"] = candidates["calibration"]
        sources["selection"] = sources["calibration"]
    digests: dict[Path, str] = {}
    excluded = {_digest(p, digests) for p in exclude}
    claims: dict[str, list[str]] = {}  # digest -> the sets that may take it, first path kept
    first_path: dict[str, Path] = {}
    for role in wanted:
        for path in candidates[role]:
            key = _digest(path, digests)
            if role != "report" and key in excluded:
                continue
            first_path.setdefault(key, path)
            if role not in claims.setdefault(key, []):
                claims[key].append(role)
    chosen: dict[str, list[Path]] = {r: [] for r in wanted}
    shared: dict[str, set[str]] = {r: set() for r in wanted}
    for key, roles in claims.items():
        roles = [r for r in roles if len(chosen[r]) < limits.get(r, 1 << 30)]
        if not roles:
            continue
        role = min(roles, key=lambda r: (len(chosen[r]) / WEIGHTS[r], ROLES.index(r)))
        chosen[role].append(first_path[key])
        for r in roles:
            shared[r].update(set(roles) - {r})
    for role in wanted:
        if not chosen[role]:
            pool = sources[role]
            raise ConfigError(
                f"no image is left for the {role} set: {pool} is shared with the "
                f"{' and '.join(sorted(shared[role]) or ['labelled'])} set(s) and no image may "
                f"be in two; give {FLAGS[role]} a folder of its own")
    sets = {r: ImageSet(chosen[r], sources[r], tuple(sorted(shared[r]))) for r in wanted}
    return ImageSets(report=sets["report"], selection=sets.get("selection"),
                     calibration=sets.get("calibration"))
