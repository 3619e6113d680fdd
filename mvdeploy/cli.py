"""The `mvdeploy` command: parse, call the library, print. Errors become one line and exit 2."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mvdeploy.errors import MvdeployError, NoSpaceError, RuntimeFailure
from mvdeploy.files import is_no_space
from mvdeploy.native_output import VERBOSE_ENV
from mvdeploy.version import __version__

PIPE_WIDTH = 200  # CI logs and pipes: wide enough that no number or key is cut with "…"


def _console(**kwargs) -> Console:
    """A Rich console that keeps its tables whole when the output is not a terminal (Rich
    would assume 80 columns); COLUMNS still wins when set."""
    probe = Console(**kwargs)
    if probe.is_terminal or os.environ.get("COLUMNS"):
        return probe
    return Console(width=PIPE_WIDTH, **kwargs)


console = _console()
err_console = _console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mvdeploy")
@click.option("--verbose", is_flag=True,
              help="Show what converters and runtimes print (normally kept in the conversion "
                   "logs or dropped).")
def app(verbose: bool) -> None:
    """Export, validate and benchmark MobileViT for Core ML, ONNX, TFLite (LiteRT) and
    ExecuTorch."""
    if verbose:  # an environment variable, so forked converters and bench workers see it too
        os.environ[VERBOSE_ENV] = "1"


@app.command()
@click.option("--patch", "-p", "patch", multiple=True, metavar="SPEC",
              help="Patch preset (A, B) or per-stage sizes (8,4,2 or 2x4,2,2); repeat for "
                   "several. Default: A and B.")
@click.option("--resolution", "-r", default="256", show_default=True, metavar="HxW",
              help="Input size: HEIGHTxWIDTH or one number, multiples of 32.")
@click.option("--weights", "-w", metavar="CKPT",
              help="Describe the model this checkpoint holds (hub id such as "
                   "apple/mobilevit-small, Hugging Face or timm directory, ml-cvnets .pt, or "
                   "mvdeploy .safetensors) instead of listing every variant.")
@click.option("--family", type=click.Choice(["v1", "v2"]),
              help="Only MobileViT (v1) or MobileViTv2 (v2). Default: both.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(patch: tuple[str, ...], resolution: str, weights: str | None, family: str | None,
           as_json: bool) -> None:
    """List the MobileViT v1 and v2 variants with parameters and MACs per patch configuration."""
    from mvdeploy.models import (
        check_attention_memory,
        format_patch_sizes,
        get_model_cfg,
        interpolated_stages,
        list_models,
        parse_patch_sizes,
        parse_resolution,
    )
    from mvdeploy.models.counts import counts

    height, width = parse_resolution(resolution)
    presets = [parse_patch_sizes(p) for p in (patch or ("A", "B"))]
    for sizes in presets:
        check_attention_memory(height, width, sizes)
    checkpoint = None
    if weights:
        from mvdeploy.models.weights import load_pretrained

        checkpoint = load_pretrained(weights)
        labels = checkpoint.class_labels
        checkpoint_info = {"path": weights, "model": checkpoint.cfg.name,
                           "num_classes": checkpoint.num_classes,
                           "labels": labels[:5] + (["..."] if len(labels) > 5 else [])
                           if labels else None}
    rows = []
    for name in [checkpoint.cfg.name] if checkpoint else list_models(family):
        cfg = get_model_cfg(name)
        for patches in presets:  # shipped counts where they exist: no torch to import
            count = counts(name, patches, height, width,
                           checkpoint.num_classes if checkpoint else 1000)
            rows.append({
                "model": name,
                "patch_sizes": [list(p) for p in patches],
                "patch": format_patch_sizes(patches),
                "resolution": [height, width],
                **count,
                "resized_stages": [8 * 2**i for i in interpolated_stages(patches, height, width)],
                "paper_params": cfg.paper_params,
                "paper_gmacs": cfg.paper_gmacs,
                "paper_top1": cfg.paper_top1,
            })
    if as_json:
        print(json.dumps({"checkpoint": checkpoint_info, "models": rows} if checkpoint else rows,
                         indent=2))
        return
    if checkpoint:
        console.print(f"{weights}: {checkpoint.cfg.name}, {checkpoint.num_classes} classes, "
                      + (f"labels {', '.join(checkpoint_info['labels'])}"
                         if checkpoint_info["labels"] else "no labels"), markup=False)
    classes = checkpoint.num_classes if checkpoint else 1000
    table = Table(title=f"MobileViT at {height}x{width} ({classes} classes)",
                  box=box.SIMPLE_HEAD)
    for col in ("model", "patch", "params", "GMACs", "attn", "resized", "paper"):
        table.add_column(col, justify="left" if col in ("model", "patch") else "right",
                         no_wrap=True)
    for r in rows:
        resized = ",".join(map(str, r["resized_stages"])) or "-"
        separable = get_model_cfg(r["model"]).family == "v2"  # no QK^T / AV matmuls
        table.add_row(r["model"], r["patch"], f"{r['params']:,}", f"{r['gmacs']:.3f}",
                      "-" if separable else f"{r['attention_gmacs']:.3f}", resized,
                      (f"{r['paper_gmacs']:.2f} " if r["paper_gmacs"] else "- ")
                      + f"{r['paper_top1']:.1f}%")
    console.print(table)
    console.print("GMACs include the attention matmuls; attn: QK^T and AV alone (v2's "
                  "separable attention has none: its MACs do not change with the patch). "
                  "resized: "
                  "strides of the stages whose feature map the patch does not divide, so it is "
                  "resized up and back (extra latency, see docs/model.md). paper: published "
                  "GMACs (v1; -: none quoted for v2) and ImageNet top-1 at 256x256, patch A.")


@app.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--android", is_flag=True,
              help="Also check the Android device and that --benchmark-binary runs on it.")
@click.option("--benchmark-binary", metavar="PATH", help="--android: LiteRT's benchmark_model.")
@click.option("--adb", default="adb", show_default=True, help="--android: adb.")
@click.option("--serial", metavar="SERIAL", help="--android: which device (adb -s).")
def doctor(as_json: bool, android: bool, benchmark_binary: str | None, adb: str,
           serial: str | None) -> None:
    """Show which converters and runtimes import, and what to install for the rest."""
    from mvdeploy.readback.doctor import as_dict, diagnose

    components, backends = diagnose()
    device = None
    if android:  # the bench's own adb code, so what passes here is what `bench` will meet
        from mvdeploy.bench.android import AndroidOptions, check_device

        device = check_device(AndroidOptions(benchmark_binary, adb, serial))
    if as_json:
        print(json.dumps({**as_dict(components, backends),
                          **({"android": device} if device else {})}, indent=2))
        if device and not device["ok"]:
            raise SystemExit(1)
        return
    table = Table(title="Packages", box=box.SIMPLE_HEAD)
    for col in ("package", "version", "status", "extra", "used for"):
        table.add_column(col)
    for c in components:
        status = "[green]ok[/]" if c.importable else f"[red]{c.error}[/]"
        table.add_row(c.package, c.version or "-", status, c.extra or "(core)", c.role)
    console.print(table)
    table = Table(title="Backends", box=box.SIMPLE_HEAD)
    for col in ("backend", "export", "run", "note"):
        table.add_column(col)
    for b in backends:
        mark = {True: "[green]yes[/]", False: "[red]no[/]"}
        table.add_row(b.name, mark[b.can_export], mark[b.can_run], b.note)
    console.print(table)
    if device:
        from mvdeploy.bench.android import describe_device

        if device["ok"]:
            console.print(f"android: {describe_device(device['device'])}: "
                          f"{device['benchmark_binary']} runs there", markup=False)
        else:
            err_console.print(f"mvdeploy: android: {device['error']}", markup=False,
                              highlight=False, soft_wrap=True)
            raise SystemExit(1)


def _export_overrides(**flags) -> dict:
    """CLI flags -> config keys; only flags the user gave, so a config file's values stand."""
    mapping = {
        "model": "model.name", "weights": "model.weights", "patch": "model.patch",
        "resolution": "model.resolution", "fold": "model.fold", "formats": "export.formats",
        "out": "export.out", "layout": "export.layout", "batch": "export.batch",
        "dynamic_batch": "export.dynamic_batch", "mask": "export.mask",
        "images": "validate.images", "labelled": "validate.labelled_images",
        "precision": "quantize.precision",
        "calibration": "quantize.calibration_images",
        "selection": "quantize.selection_images",
        "calibration_method": "quantize.calibration_method",
        "min_snr": "quantize.min_snr_db", "sensitivity": "quantize.sensitivity",
        "max_top1_drop": "quantize.max_top1_drop",
    }
    # a format's own flags arrive as FORMAT__KEY (see _format_flags)
    return {mapping.get(k) or k.replace("__", ".", 1): v for k, v in flags.items()
            if v is not None}


def _format_flags(command):
    """The options each format declares for `mvdeploy export` (e.g. TFLite's --channels-last)."""
    from mvdeploy.backends import specs

    for spec in reversed(specs()):
        for flag in reversed(spec.flags):
            kwargs = {"help": flag.help}
            if flag.is_flag:
                kwargs.update(is_flag=True, default=None)
            elif flag.choices:
                kwargs["type"] = click.Choice(list(flag.choices))
            else:
                kwargs["metavar"] = "VALUE"
            command = click.option(*flag.decls, f"{spec.name}__{flag.key}", **kwargs)(command)
    return command


def _export_help() -> dict[str, str]:
    """Help text that lists what the registry knows, so it never goes stale."""
    from mvdeploy.backends import default_formats, specs

    chosen = [s for s in specs() if s.selectable]
    recipes: dict[str, list[str]] = {}
    for s in chosen:
        for recipe in s.recipes:
            recipes.setdefault(recipe, []).append(s.name)
    return {
        "formats": f"Comma-separated: {','.join(s.name for s in chosen)} "
                   f"(default: {','.join(default_formats())}).",
        "dynamic_batch": "A symbolic batch dimension ("
                         + ", ".join(s.title for s in chosen if s.dynamic_batch) + " only).",
        "precision": "; ".join(f"{r} ({', '.join(t)})" for r, t in recipes.items())
                     + ". Default: fp32 (or the format's own float default).",
    }


_HELP = _export_help()


@app.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--model", "-m",
              help="mobilevit_xxs (default), _xs, _s; mobilevitv2_050 ... _200; "
                   "deeplabv3_mobilevit_xxs / _xs / _s, deeplabv3_mobilevitv2_050 ... "
                   "(segmentation). It must be the model --weights holds.")
@click.option("--weights", "-w", metavar="CKPT",
              help="Hugging Face Hub id (apple/mobilevit-xx-small, "
                   "timm/mobilevit_xxs.cvnets_in1k, org/name@revision) or a local checkpoint "
                   "(HF/timm directory, ml-cvnets .pt, .safetensors); seeded random weights "
                   "when absent.")
@click.option("--patch", "-p", metavar="SPEC", help="A, B, or per-stage sizes: 8,4,2 or 2x4,2,2.")
@click.option("--resolution", "-r", metavar="HxW", help="HEIGHTxWIDTH or one number (x32).")
@click.option("--format", "-f", "formats", metavar="LIST", help=_HELP["formats"])
@click.option("--out", "-o", metavar="DIR", help="Output directory.")
# the choices are config.LAYOUTS, written out: importing config here would slow --help
@click.option("--layout", type=click.Choice(["mvdeploy", "hf"]),
              help="hf: --out is also the folder optimum and transformers.js load "
                   "(config.json, preprocessor_config.json, onnx/model.onnx).")
@click.option("--batch", type=click.IntRange(min=1),
              help="Fixed batch size of the artifacts (default 1).")
@click.option("--dynamic-batch", is_flag=True, default=None, help=_HELP["dynamic_batch"])
@click.option("--mask", is_flag=True, default=None,
              help="Segmentation: output the class index of every input pixel (int32 "
                   "[B, H, W], named mask) instead of logits at 1/output-stride of the input.")
@_format_flags
# the choices are models.FOLD_IMPLS, written out: importing models would import torch
@click.option("--fold", type=click.Choice(["auto", "nhwc", "rank4", "permute"]),
              help="Unfold/fold form for every format (default auto: each format's fastest; "
                   "nhwc and rank4 keep tensors at rank 4, permute makes rank 6).")
@click.option("--precision", metavar="RECIPE", help=_HELP["precision"])
@click.option("--calibration", metavar="DIR",
              help="Photos to calibrate int8-static / w8a8 on (default: a share of the bundled "
                   "samples, a demo; never the --images photos the report is measured on).")
@click.option("--selection", metavar="DIR",
              help="Photos int8-static's float-group search tunes on (default: a share of the "
                   "--calibration images; never calibration or report photos).")
@click.option("--calibration-method",
              type=click.Choice(["auto", "minmax", "entropy", "percentile", "histogram"]),
              help="Activation calibration: ONNX minmax|entropy|percentile, TFLite and Core ML "
                   "w8a8 histogram|minmax (default auto: each format's measured best).")
@click.option("--min-snr", type=float, metavar="DB",
              help="int8-static (ONNX, TFLite) must keep this logit SNR on held-out photos "
                   "(default 30); below it the most sensitive layer groups stay float.")
@click.option("--max-top1-drop", type=float, metavar="PTS",
              help="With --labelled: int8-static may lose at most this many top-1 accuracy "
                   "points against PyTorch (default 1).")
@click.option("--sensitivity", is_flag=True, default=None,
              help="Measure every layer group's int8 sensitivity (table, sensitivity.json and "
                   ".png in the format's folder) even when int8 already meets --min-snr.")
@click.option("--images", metavar="DIR",
              help="Validate (and gate) on this folder of photos instead of the bundled "
                   "samples; nothing calibrates or tunes on them.")
@click.option("--labelled", metavar="DIR",
              help="Folder of CLASS/*.jpg: report top-1 accuracy of each artifact and of "
                   "PyTorch (CLASS = a checkpoint label or a class index).")
@click.option("--set", "sets", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Override any config key, e.g. --set onnx.opset=20 (repeatable).")
@click.option("--force", is_flag=True, help="Replace artifacts that already exist in --out.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for the validation runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def export(config: str | None, sets: tuple[str, ...], force: bool, threads: int | None,
           as_json: bool, **flags) -> None:
    """Export MobileViT to each format asked for, each validated against PyTorch.

    \b
    mvdeploy export --model mobilevit_xxs --patch B --resolution 320x256 --out out/
    mvdeploy export export_configs/mobilevit_xxs_B_android.toml --set model.weights=ckpt/
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from mvdeploy import api
    from mvdeploy.native_output import terminal_stream
    from mvdeploy.pipeline.config import load_config, parse_override

    overrides = _export_overrides(**flags)
    overrides.update(parse_override(s) for s in sets)
    load_config(config, overrides)  # a mistake in the flags is reported before the display
    progress_console = _console(file=terminal_stream(2), stderr=True)
    columns = (SpinnerColumn(finished_text=""), TextColumn("{task.fields[mark]}"),
               TextColumn("{task.description}"), TimeElapsedColumn())
    live = progress_console.is_terminal  # elsewhere (CI, pipes): one plain line per step
    with Progress(*columns, console=progress_console, disable=not live) as progress, \
            _interrupt_flag() as stop:
        @contextlib.contextmanager
        def step(text: str):
            task = progress.add_task(text, total=1, mark="")
            began = time.perf_counter()
            if not live:
                progress_console.print(f"{text} ...", markup=False, highlight=False)
            try:
                yield
                if stop.is_set():  # a Ctrl-C that a library swallowed: honour it here
                    raise stop.exception
            except BaseException:
                progress.update(task, completed=1, mark="[red]✗[/]")
                if not live:
                    progress_console.print(f"failed: {text}", markup=False, highlight=False)
                raise
            progress.update(task, completed=1, mark="[green]✓[/]")
            if not live:
                progress_console.print(f"done: {text} ({time.perf_counter() - began:.1f} s)",
                                       markup=False, highlight=False)

        def warn(text: str) -> None:
            progress.console.print(f"mvdeploy: warning: {text}", markup=False, highlight=False,
                                   style="yellow")

        result = api.export(config=config, settings=overrides, force=force, threads=threads,
                            progress=step, warn=warn)
    rows = [_format_row(r) for r in result.formats]
    if as_json:
        print(json.dumps({"out": str(result.out), "program": str(result.program or ""),
                          "ok": result.ok, "formats": rows}, indent=2))
    else:
        _print_export_table(result, rows)
    if not result.ok:
        raise SystemExit(1)


class Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds like Ctrl-C, so no half-written folder stays behind."""

    signum = signal.SIGTERM
    said = "terminated (SIGTERM)"


class HungUp(Terminated):
    """SIGHUP (the terminal closed, an SSH connection dropped): the same as SIGTERM. Its
    default ended the process at once, orphaning the converter child and leaving partial
    files, a convert log and a scratch folder."""

    signum = signal.SIGHUP
    said = "hung up (SIGHUP)"


_STOPPED_BY = {signal.SIGTERM: Terminated, signal.SIGHUP: HungUp}


def _exit_code(exception: type) -> int:
    """A shell's code for a process a signal stopped: 128 + the signal (130 for Ctrl-C)."""
    return 128 + exception.signum if issubclass(exception, Terminated) else 130


@contextlib.contextmanager
def _interrupt_flag():
    """Remember Ctrl-C even when the KeyboardInterrupt it raises is swallowed.

    Python drops exceptions raised inside finalizers ("Exception ignored in __del__"), and the
    converters run many; the flag lets each progress step re-raise before anything is kept.
    """
    flag = threading.Event()
    flag.exception = KeyboardInterrupt  # what to raise again: Terminated after SIGTERM

    def handler(signum, frame):
        flag.exception = _STOPPED_BY.get(signum, KeyboardInterrupt)
        flag.set()
        raise flag.exception

    # SIGTERM (a timeout, a CI cancel, `docker stop`) and SIGHUP clean up exactly like Ctrl-C
    previous = {sig: signal.signal(sig, handler)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@app.command(name="inspect")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def inspect_command(artifact: str, as_json: bool) -> None:
    """Show an artifact's inputs, outputs, precision, size, ops, metadata and manifest."""
    from mvdeploy.readback.inspect import inspect_artifact

    info = inspect_artifact(artifact)
    if info.get("manifest_note"):
        err_console.print(f"mvdeploy: warning: {info['manifest_note']}", markup=False,
                          highlight=False, soft_wrap=True)  # one line, however long
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    console.print(f"[bold]{info['file']}[/]  {info['format']}, {info['precision']}, "
                  f"{info['size_bytes'] / 1e6:.2f} MB, sha256 {info['sha256'][:16]}…")
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("", "name", "shape", "dtype", "quantization"):
        table.add_column(col)
    for kind in ("inputs", "outputs"):
        for t in info.get(kind, []):
            q = t.get("quantization")
            dtype = t["dtype"] + (f" ({t['color_layout']})" if t.get("color_layout") else "")
            table.add_row(*(Text(c) for c in (  # Text: "dict[string, double]" is not markup
                kind[:-1], t["name"], str(t["shape"]), dtype,
                f"scale {q['scale']:.3g}, zero {q['zero_point']}" if q else "-")))
    console.print(table)
    ops = info.get("ops", {})
    console.print(f"ops ({sum(ops.values())}): " + ", ".join(
        f"{k} {v}" for k, v in list(ops.items())[:12]) + (" …" if len(ops) > 12 else ""),
        markup=False)
    if "max_rank" in info:
        console.print(f"max tensor rank: {info['max_rank']}")
    if info.get("runs_on"):
        console.print(f"runs on: {info['runs_on']}", markup=False, highlight=False)
    for key, value in (info.get("metadata") or {}).items():
        text = json.dumps(value) if not isinstance(value, str) else value
        console.print(f"metadata {key}: {text[:200]}{'…' if len(text) > 200 else ''}",
                      markup=False, highlight=False)
    manifest = info["manifest"]
    if manifest:
        v = manifest["validation"]
        console.print(f"manifest: {manifest['model']['name']}, patch "
                      f"{manifest['model']['patch_sizes']}, validation {v['status']}"
                      + (f" ({'; '.join(v['failures'])})" if v["failures"] else ""),
                      markup=False, highlight=False)


@app.command(name="predict")
@click.argument("artifact", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top", "-k", default=5, show_default=True, help="How many classes to show.")
@click.option("--masks", "masks_dir", metavar="DIR", type=click.Path(),
              help="Segmentation: write each PHOTO_mask.png here (default: beside the photo).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict_command(artifact: str, images: tuple[str, ...], top: int, masks_dir: str | None,
                    as_json: bool) -> None:
    """Top-k classes for photos, with the artifact's own preprocessing (Core ML off macOS:
    through mvdeploy's reference executor). A segmentation artifact writes a colour mask
    PNG per photo (PASCAL VOC colours, pixel values = class indices, in the crop the model
    saw) and lists the classes covering most pixels."""
    from mvdeploy.readback.predict import predict

    results = predict(artifact, list(images), top=top, masks_dir=masks_dir)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            if "top" in result:
                console.print(f"[bold]{result['image']}[/]")
                for entry in result["top"]:
                    console.print(f"  {entry['probability']:7.2%}  {entry['label']}",
                                  markup=False)
            elif "classes" in result:
                console.print(f"[bold]{result['image']}[/] -> {escape(result['mask'])}")
                for entry in result["classes"]:
                    console.print(f"  {entry['share']:7.2%} of pixels  {entry['label']}",
                                  markup=False)
    failed = [r for r in results if "error" in r]
    for r in failed:
        err_console.print(f"mvdeploy: error: cannot read image {r['image']}: {r['error']}",
                          markup=False, highlight=False, soft_wrap=True)
    if failed:
        raise SystemExit(2)  # the others were classified above


@app.command(name="eval")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--data", "-d", required=True, metavar="DIR",
              help="Labelled folder. Classification: one sub-folder per class, named by the "
                   "model's label, a class index, or an ImageNet-1k synset id (n01440764). "
                   "Segmentation: PASCAL VOC layout, JPEGImages/ and SegmentationClass/ (PNG "
                   "masks of class indices, 255 = void), optionally ImageSets/Segmentation/"
                   "val.txt.")
@click.option("--task", type=click.Choice(["classification", "segmentation"]),
              help="The task the artifacts serve (default: read from each artifact); a "
                   "mismatch is refused.")
@click.option("--limit", "-n", type=click.IntRange(min=1), metavar="N",
              help="Use N images spread evenly over the folder (default: all).")
@click.option("--weights", "-w", metavar="CKPT",
              help="Also run the PyTorch model from this checkpoint (hub id or path) and report "
                   "its accuracy and each artifact's agreement with it.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Runtime threads (default: the runtime's choice).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per artifact.")
def eval_command(artifacts: tuple[str, ...], data: str, task: str | None, limit: int | None,
                 weights: str | None, threads: int | None, as_json: bool) -> None:
    """Top-1 / top-5 accuracy of classifiers, or mIoU and pixel accuracy of segmentation
    models, on a labelled folder (streamed in batches), with the preprocessing and labels
    embedded in each artifact.

    \b
    mvdeploy eval out/onnx/model.onnx out/tflite/model.tflite --data held-out/ --json
    mvdeploy eval model.onnx --data imagenet/val --weights apple/mobilevit-small --limit 5000
    mvdeploy eval seg/onnx/model.onnx --task segmentation --data VOC2012/
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from mvdeploy.native_output import terminal_stream
    from mvdeploy.readback.evaluate import evaluate_artifacts

    progress_console = _console(file=terminal_stream(2), stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=progress_console) as progress, _interrupt_flag() as stop:
        tasks: dict[str, int] = {}

        def advance(artifact: str, done: int, total: int) -> None:
            if stop.is_set():
                raise stop.exception
            if artifact not in tasks:
                tasks[artifact] = progress.add_task(os.path.basename(artifact), total=total)
            progress.update(tasks[artifact], completed=done)

        results = evaluate_artifacts(list(artifacts), data, limit=limit, weights=weights,
                                     threads=threads, task=task, progress=advance)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        _print_eval_table(data, results)
    _print_unreadable_and_errors(results, as_json)


# eval's table per task: title, then (header, where in a result, format) per score column
_EVAL_COLUMNS = {
    "classification": ("Accuracy", (("top-1", ("top1",), "{:.2%}"), ("top-5", ("top5",), "{:.2%}"),
                                    ("PyTorch top-1", ("reference", "top1"), "{:.2%}"),
                                    ("same top-1", ("agreement", "top1"), "{:.2%}"))),
    "segmentation": ("Segmentation", (("mIoU", ("miou",), "{:.4f}"),
                                      ("pixel acc.", ("pixel_accuracy",), "{:.2%}"),
                                      ("PyTorch mIoU", ("reference", "miou"), "{:.4f}"),
                                      ("same pixels", ("agreement", "pixels"), "{:.2%}"))),
}


def _print_eval_table(data: str, results: list[dict]) -> None:
    task = next((r["task"] for r in results if "task" in r), "classification")
    title, columns = _EVAL_COLUMNS[task]
    table = Table(title=f"{title} on {data}", box=box.SIMPLE_HEAD)
    for col in ("artifact", "format", "precision", "images", *(c[0] for c in columns)):
        table.add_column(col, no_wrap=col != "artifact")

    def cell(result: dict, where: tuple[str, ...], fmt: str) -> str:
        for key in where:
            if not isinstance(result, dict) or key not in result:
                return "-"
            result = result[key]
        return "-" if result is None else fmt.format(result)

    for r in results:
        table.add_row(Text(r["artifact"]), r["format"], r["precision"],
                      str(r.get("images", "-")), *(cell(r, w, f) for _, w, f in columns))
    console.print(table)


def _print_unreadable_and_errors(results: list[dict], as_json: bool) -> None:
    for r in [] if as_json else results:
        if r.get("unreadable"):
            console.print(f"{r['artifact']}: {r['unreadable']} images could not be read and "
                          f"are not counted: {', '.join(r['unreadable_files'])}"
                          + (" ..." if r["unreadable"] > len(r["unreadable_files"]) else ""),
                          markup=False, highlight=False, soft_wrap=True)
    failed = [r for r in results if "error" in r]
    for r in failed:
        err_console.print(f"mvdeploy: {r['artifact']}: {r['error']}", markup=False,
                          highlight=False, soft_wrap=True)
    if failed:
        raise SystemExit(1)


@app.command(name="snippet")
@click.argument("artifact", type=click.Path())
@click.option("--client", default=None, help="Another client to write for: mediapipe (Kotlin) "
              "or mediapipe-python, for a .tflite.")
def snippet_command(artifact: str, client: str | None) -> None:
    """App code for an exported artifact (Swift for Core ML, Kotlin for Android runtimes),
    with the artifact's real tensor names, generated from its manifest."""
    from mvdeploy.readback.snippets import load_manifest, snippet

    _, code = snippet(load_manifest(artifact), client)
    print(code, end="")


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _split_patches(values: tuple[str, ...]) -> list[str]:
    """--patch 8,4,2 is one spec; --patch A,B is two presets."""
    out = []
    for value in values:
        parts = [v.strip() for v in value.split(",")]
        out += parts if all(p.isalpha() for p in parts) else [value]
    return out


def _ints(values: list[str], flag: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise click.BadParameter(f"{flag} takes whole numbers, got {', '.join(values)}") from None


def _runtime_help() -> str:
    from mvdeploy.backends import runtimes

    opt_in = sorted({r.name for s in runtimes().values() for r in s.runtimes if not r.default})
    return (f"torch, torch-compile, {', '.join(runtimes())} (default: the target's runtimes "
            f"except torch-compile, which compiles in every worker, and {', '.join(opt_in)}).")


@app.command()
@click.option("--suite", metavar="TOML", type=click.Path(dir_okay=False),
              help="A suite file ([suite] matrix, [timing]); flags override it.")
@click.option("--model", "--models", "-m", "models", multiple=True, metavar="LIST",
              help="mobilevit_xxs,mobilevit_xs,mobilevit_s (default: mobilevit_xxs).")
@click.option("--patch", "-p", "patches", multiple=True, metavar="SPEC",
              help="A, B or per-stage sizes (8,4,2); repeat for several (default: A and B).")
@click.option("--resolution", "-r", "resolutions", multiple=True, metavar="LIST",
              help="HEIGHTxWIDTH or one number (default 256).")
@click.option("--backend", "--runtime", "-b", "runtimes", multiple=True, metavar="LIST",
              help=_runtime_help())
@click.option("--precision", "precisions", multiple=True, metavar="LIST",
              help="fp32, fp16, int8-dynamic, int8-static, ... (default fp32).")
@click.option("--threads", "-t", "threads", multiple=True, metavar="LIST",
              help="Thread counts (default: this machine's cores, at most 4).")
@click.option("--batch", "batches", multiple=True, metavar="LIST", help="Batch sizes (default 1).")
@click.option("--target", type=click.Choice(["cpu", "cuda", "android", "apple", "aihub"]),
              help="Where to run (default cpu); aihub: Qualcomm AI Hub's phones.")
@click.option("--accelerator", "accelerators", multiple=True, metavar="LIST",
              help="cuda: cuda, tensorrt; android: xnnpack, gpu, cpu; apple: ALL, CPU_ONLY, "
                   "CPU_AND_GPU, CPU_AND_NE; aihub: all, npu, gpu, cpu.")
@click.option("--device", "devices", multiple=True, metavar="NAME",
              help='aihub: an AI Hub device, e.g. "Samsung Galaxy S24"; repeat for several.')
@click.option("--validate-on-device", is_flag=True,
              help="aihub: also run the photos on the device and compare with PyTorch.")
@click.option("--peer/--no-peer", default=None,
              help="Also time transformers' MobileViT with the same weights, exported plainly.")
@click.option("--weights", "-w", metavar="PATH", help="Checkpoint (default: seeded random).")
@click.option("--out", "-o", metavar="DIR", help="Where results go (default bench_out).")
@click.option("--cache", metavar="DIR",
              help="Artifact cache (default $MVDEPLOY_CACHE or ~/.cache/mvdeploy/bench).")
@click.option("--quick", is_flag=True, help="Smoke run: 2 warm-up, 5 runs, 1 round.")
@click.option("--warmup", type=int, help="Warm-up runs per round (default 10).")
@click.option("--min-runs", type=int, help="Timed runs per round, at least (default 50).")
@click.option("--min-seconds", type=float, help="Timed seconds per round, at least (default 2).")
@click.option("--repetitions", type=int, help="Interleaved rounds (default 3).")
@click.option("--timeout", "timeout_s", type=float, help="Seconds per config and round (600).")
@click.option("--benchmark-binary", metavar="PATH", help="android: LiteRT's benchmark_model.")
@click.option("--adb", metavar="PATH", default="adb", show_default=True, help="android: adb.")
@click.option("--serial", metavar="SERIAL", help="android: which device (adb -s).")
@click.option("--force", is_flag=True, help="Replace results already in --out.")
@click.option("--compare", nargs=2, metavar="OLD.json NEW.json",
              help="Compare two result files instead of measuring; exit 1 on a regression.")
@click.option("--threshold", type=float, default=0.10, show_default=True,
              help="--compare: a change above this fraction is a regression / improvement.")
@click.option("--report", "report_from", metavar="JSON",
              help="Redraw CSV, Markdown and plots from a results.json instead of measuring.")
@click.option("--json", "as_json", is_flag=True, help="Print the results (or comparison) as JSON.")
def bench(suite, models, patches, resolutions, runtimes, precisions, threads, batches, target,
          accelerators, devices, validate_on_device, peer, weights, out, cache, quick, warmup,
          min_runs, min_seconds, repetitions, timeout_s, benchmark_binary, adb, serial, force,
          compare, threshold, report_from, as_json) -> None:
    """Latency per patch configuration, model, runtime, precision and thread count.

    \b
    mvdeploy bench --model mobilevit_xxs --patch 2,2,2 --patch 8,4,2 \\
        --backend onnxruntime,litert --precision fp32,int8-static --threads 1,2 --out DIR
    mvdeploy bench --suite benchmarks/patch_size_study.toml --out results/
    mvdeploy bench --compare old/results.json new/results.json
    """
    from pathlib import Path

    from mvdeploy.bench import report as reports

    if compare:
        _bench_compare(*compare, threshold=threshold, as_json=as_json)
        return
    if report_from:
        data = reports.load_report(report_from)
        data.update(reports.derived_figures(data["results"]))
        for path in reports.write_all(data, Path(report_from).parent):
            console.print(f"wrote {path}", markup=False, highlight=False)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from mvdeploy.bench import session
    from mvdeploy.bench.android import AndroidOptions
    from mvdeploy.native_output import terminal_stream

    command = "mvdeploy bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else \
        "mvdeploy bench"
    planned = session.plan(
        suite=suite, models=_split(models), patches=_split_patches(patches),
        resolutions=_split(resolutions), runtimes=_split(runtimes),
        precisions=_split(precisions), threads=_ints(_split(threads), "--threads"),
        batches=_ints(_split(batches), "--batch"), target=target,
        accelerators=_split(accelerators), peer=peer, weights=weights, out=out, cache=cache,
        quick=quick, force=force, android=AndroidOptions(benchmark_binary, adb, serial),
        devices=devices, validate_on_device=validate_on_device, command=command,
        warmup=warmup, min_runs=min_runs, min_seconds=min_seconds, repetitions=repetitions,
        timeout_s=timeout_s)
    for warning in planned.warnings:
        err_console.print(f"mvdeploy: warning: {warning}", markup=False, highlight=False,
                          style="yellow")
    progress_console = _console(file=terminal_stream(2), stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total}"), TimeElapsedColumn())
    live = progress_console.is_terminal  # elsewhere (CI, pipes): one plain line per run
    with Progress(*columns, console=progress_console, disable=not live) as progress, \
            _interrupt_flag() as stop:
        task = progress.add_task("preparing artifacts", total=None)

        def log(text: str) -> None:
            if stop.is_set():
                raise stop.exception
            progress.console.print(text, markup=False, highlight=False)

        def advance(done: int, total: int, text: str) -> None:
            progress.update(task, completed=done, total=total, description=text)
            if not live:
                progress_console.print(f"[{done + 1}/{total}] {text}", markup=False,
                                       highlight=False)

        outcome = session.run(planned, log=log, progress=advance)
        progress.update(task, completed=progress.tasks[0].total or 0)
    data, written = outcome.report, outcome.written
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        _print_bench_table(data)
        for path in written:
            console.print(f"wrote {path}", markup=False, highlight=False)
    if outcome.interrupted:
        how = getattr(stop.exception, "said", "interrupted")
        err_console.print(f"mvdeploy: {how}: the results above are what was measured",
                          markup=False, highlight=False)
        raise SystemExit(_exit_code(stop.exception))
    if any(r["status"] == "failed" for r in data["results"]):
        raise SystemExit(1)
    off = [r for r in data["results"] if (r.get("device_fidelity") or {}).get("passed") is False]
    if off:
        err_console.print(f"mvdeploy: on the device, {len(off)} configuration(s) gave outputs "
                          f"that differ from PyTorch's beyond the export's tolerance: "
                          f"{off[0]['device_fidelity']['failures'][0]} ({_bench_label(off[0])})",
                          markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(1)
    if not any(r["status"] == "ok" for r in data["results"]):
        err_console.print(f"mvdeploy: nothing was measured: none of the "
                          f"{len(data['results'])} configuration(s) can run here (reasons "
                          "above); the results files say so", markup=False, highlight=False)
        raise SystemExit(1)


def _print_bench_table(data: dict) -> None:
    table = Table(title="mvdeploy bench (ms; all figures in results.md)", box=box.SIMPLE_HEAD)
    for col in ("configuration", "p50", "p90", "CV", "load", "RSS MB", "status"):
        table.add_column(col, no_wrap=col not in ("configuration", "status"))
    for r in data["results"]:
        lat = r.get("latency_ms") or {}
        fmt = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        status = "[green]ok[/]" if r["status"] == "ok" else f"[red]{r['status']}[/]"
        if lat.get("noisy"):
            status += " [yellow]noisy[/]"
        table.add_row(Text(_bench_label(r)), fmt(lat.get("p50")), fmt(lat.get("p90")),
                      fmt(lat.get("cv"), 3), fmt(r.get("load_ms"), 0),
                      fmt(r.get("peak_rss_mb"), 0), status)
    console.print(table)
    for r in data["results"]:
        if r["status"] != "ok":
            console.print(f"{_bench_label(r)}: {r['status']}: {r['error']}", markup=False,
                          highlight=False)
    for s in data.get("patch_speedups", []):
        caveat = "; noisy: may be the machine, measure again" if s.get("noisy") else ""
        console.print(f"{s['model']} {s['runtime']} {s['precision']} t{s['threads']}: patch B "
                      f"vs A {s['b_faster_pct']:+.1f} % (positive: B faster{caveat})",
                      markup=False)
    for q in data.get("runtime_ratios", []):
        console.print(f"{q['model']} {q['preset']} {q['precision']} t{q['threads']}: "
                      f"{q['runtime']} / {q['against']} = {q['ratio']:.2f} (same file"
                      + (", transformers' export)" if q.get("impl") == "transformers" else ")"),
                      markup=False)
    for p in data.get("peer", []):
        rounds = p.get("round_ratios") or []
        spread = f" (rounds {min(rounds):.2f}-{max(rounds):.2f})" if rounds else ""
        console.print(f"{p['model']} {p['runtime']} t{p['threads']}: ours / transformers = "
                      f"{p['ratio']:.2f}{spread}", markup=False)


def _bench_label(row: dict) -> str:
    from mvdeploy.bench.matrix import BenchConfig

    return BenchConfig.from_row(row).label


def _bench_compare(old: str, new: str, *, threshold: float, as_json: bool) -> None:
    from mvdeploy.bench.report import FAILING_VERDICTS, compare, load_report

    if threshold <= 0:
        raise click.BadParameter("--threshold must be above 0")
    before, after = load_report(old), load_report(new)
    for path, data in ((old, before), (new, after)):
        if not any(r["status"] == "ok" for r in data["results"]):
            raise RuntimeFailure(f"{path} measured nothing (every configuration was "
                                 "unavailable or failed): there is nothing to compare")
    rows = compare(before, after, threshold)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title=f"{new} vs {old} (p50 ms)", box=box.SIMPLE_HEAD)
        # a narrow terminal wraps the configuration rather than cutting it: two rows that
        # differ only at the end must not read the same
        table.add_column("configuration", overflow="fold")
        for col in ("old", "new", "new/old", "verdict"):
            table.add_column(col, no_wrap=True)
        for r in rows:
            colour = {"regression": "red", "failed": "red", "improvement": "green"}.get(
                r["verdict"], "yellow" if r["verdict"] != "same" else "white")
            new_p50 = "-" if r["new_p50_ms"] is None else f"{r['new_p50_ms']:.2f}"
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
            table.add_row(Text(r["key"]), f"{r['old_p50_ms']:.2f}", new_p50, ratio,
                          f"[{colour}]{r['verdict']}[/]")
        console.print(table)
    if any(r["verdict"] in FAILING_VERDICTS for r in rows):
        raise SystemExit(1)


def _format_row(r) -> dict:
    row = {"format": r.format, "artifact": str(r.artifact or ""), "seconds": r.seconds,
           "precision": r.report.precision if r.report else None,
           "status": "error" if r.error else r.report.status, "error": r.error,
           "log": str(r.log or ""), "failures": r.report.failures if r.report else [],
           "note": r.report.note if r.report else "",
           "degenerate": bool(r.report and r.report.degenerate),
           "accuracy": r.report.accuracy if r.report else {}}
    if r.artifact:
        row["size_mb"] = round(r.size_bytes / 1e6, 2)
        row["size_ratio_to_fp32"] = r.size_ratio_to_fp32
    if r.speed and r.speed.get("measured"):
        row["speedup"] = r.speed["speedup"]
    if r.float_search is not None:
        row["float_search"] = r.float_search.to_dict()
    if r.report and "photos" in r.report.metrics:
        m = r.report.metrics["photos"]
        row.update(max_abs=m.max_abs, snr_db=m.snr_db, cosine=m.cosine,
                   top1_agreement=m.top1_agreement, top5_agreement=m.top5_agreement,
                   photos=m.samples, top1_same=round(m.top1_agreement * m.samples),
                   decisive=m.decisive,
                   top1_same_decisive=round(m.top1_agreement_decisive * m.decisive))
        if m.mask_miou is not None:  # segmentation: agreement is per pixel
            row.update(pixel_agreement=m.top1_agreement, mask_miou=m.mask_miou,
                       pixel_agreement_decisive=m.top1_agreement_decisive)
    return row


def _pixel_agreement(row: dict) -> str:
    """A segmentation row's share of pixels with PyTorch's class (on decisive pixels too,
    the ones the gate counts, when some are near ties)."""
    if "pixel_agreement" not in row:
        return "-"
    shown = f"{row['pixel_agreement']:.2%}"
    if row["pixel_agreement_decisive"] != row["pixel_agreement"]:
        shown += f" ({row['pixel_agreement_decisive']:.2%} decisive)"
    return shown


def _top1_counts(row: dict) -> str:
    """Counts, not a percentage beside "passed" that seems to contradict it: the gate counts
    only decisive photos (reference top-1 not a near tie), so both are shown when they differ."""
    if "photos" not in row:
        return "-"
    counts = f"{row['top1_same']}/{row['photos']}"
    if row["decisive"] == row["photos"]:
        return counts
    return f"{counts} ({row['top1_same_decisive']}/{row['decisive']} decisive)"


def _print_export_table(result, rows: list[dict]) -> None:
    gate = next((row["photos"] for row in rows if "photos" in row), None)
    table = Table(title=f"Exported to {result.out}" + (
        f": validated on {gate} report photo(s), none used to calibrate or tune"
        if gate is not None else ""), box=box.SIMPLE_HEAD)
    timed = any("speedup" in row for row in rows)
    masks = any("mask_miou" in row for row in rows)  # segmentation: per-pixel agreement
    agreement = ("pixels same", "mask mIoU") if masks else ("top-1 same", "top-5")
    for col in ("format", "precision", "MB", "status", "max abs", "SNR dB", *agreement,
                *(["x fp32"] if timed else []), "s"):
        table.add_column(col, no_wrap=True)
    for row in rows:
        status = {"passed": "[green]passed[/]", "structural": "[yellow]structural[/]"}.get(
            row["status"], f"[red]{row['status']}[/]")
        shown = (("max_abs", "{:.1e}"), ("snr_db", "{:.1f}"),
                 *((("pixel_agreement", _pixel_agreement), ("mask_miou", "{:.3f}")) if masks
                   else (("top1_agreement", _top1_counts), ("top5_agreement", "{:.0%}"))))
        # agreement with a reference that gives one answer for everything proves nothing
        metrics = ["n/a" if row["degenerate"] and ("agreement" in k or k == "mask_miou")
                   else f(row) if callable(f)
                   else f.format(row[k]) if row.get(k) is not None else "-"
                   for k, f in shown]
        speed = ([f"{row['speedup']:.2f}" if "speedup" in row else "-"] if timed else [])
        table.add_row(row["format"], row["precision"] or "-", str(row.get("size_mb", "-")),
                      status, *metrics, *speed, f"{row['seconds']:.0f}")
    console.print(table)
    for row in rows:
        if row["artifact"]:
            console.print(f"{row['format']}: {row['artifact']}", markup=False, highlight=False)
    for row in rows:
        if "float_search" in row:
            _print_float_search(row["format"], row["float_search"])
    for row in rows:
        for failure in row["failures"]:
            console.print(f"[red]{row['format']}: {escape(failure)}[/]")
        if row["error"]:  # escaped: 'pip install "mvdeploy[tflite]"' is not markup
            console.print(f"[red]{row['format']} failed: {escape(row['error'])}[/] "
                          f"(log: {escape(str(row['log']))})")
        if row["note"]:
            console.print(f"[yellow]{row['format']}: {escape(row['note'])}[/]")
        for acc in row["accuracy"].values():
            if "artifact_miou" in acc:  # segmentation: a VOC-layout folder
                console.print(f"{row['format']}: mIoU on {acc['images']} labelled images "
                              f"{acc['artifact_miou']:.3f} (PyTorch {acc['reference_miou']:.3f}),"
                              f" pixel accuracy {acc['artifact_pixel_accuracy']:.1%}"
                              + (f", same class as PyTorch on {acc['agreement_pixels']:.1%} of "
                                 "output pixels" if acc["agreement_pixels"] is not None else ""),
                              markup=False, highlight=False)
                continue
            console.print(f"{row['format']}: top-1 accuracy on {acc['images']} labelled images "
                          f"{acc['artifact_top1']:.1%} (PyTorch {acc['reference_top1']:.1%}), "
                          f"same top-1 as PyTorch {acc['agreement_top1']:.1%}"
                          + (f"; {acc['unreadable']} unreadable images not counted"
                             if acc["unreadable"] else ""), markup=False, highlight=False)


def _print_float_search(fmt: str, search: dict) -> None:
    """What int8-static kept float, and the sensitivity table when it was measured."""
    kept, target = search["float_groups"], search["target"]["min_snr_db"]
    verdict = "met" if search["reached"] else f"NOT met within {search['max_float_groups']} groups"
    console.print(f"{fmt}: int8 target {target:g} dB {verdict} on the search's "
                  f"{search['selection_images']} selection photo(s)"
                  + (f" and {search['selection_views']} colour/brightness/contrast variants"
                     if search.get("selection_views") else "")
                  + f": {search['snr_db']:.1f} dB "
                  f"with {len(kept)} of {search['groups']} layer groups float after "
                  f"{search['tries']} tries" + (f" ({', '.join(kept)})" if kept else ""),
                  markup=False, highlight=False)
    if not search["sensitivity"]:
        return
    table = Table(title=f"{fmt}: int8 sensitivity (logit SNR with only this group in int8)",
                  box=box.SIMPLE_HEAD)
    for col in ("rank", "layer group", "SNR dB", "kept float"):
        table.add_column(col, no_wrap=True)
    for i, row in enumerate(search["sensitivity"], 1):
        table.add_row(str(i), row["group"], f"{row['snr_db']:.1f}",
                      "yes" if row["group"] in kept else "")
    console.print(table)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; user mistakes become one line on stderr and 2."""
    verbose = os.environ.get(VERBOSE_ENV)
    try:
        result = app.main(args=argv, prog_name="mvdeploy", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `mvdeploy`: help, not an error
        console.print(exc.ctx.get_help() if exc.ctx else exc.format_message(), markup=False,
                      highlight=False)
        return 0
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "mvdeploy"
        hint = f" (see '{where} --help')"
        err_console.print(f"mvdeploy: error: {exc.format_message()}{hint}", markup=False,
                          highlight=False, soft_wrap=True)
        return 2
    except MvdeployError as exc:
        err_console.print(f"mvdeploy: error: {exc}", markup=False, highlight=False,
                          soft_wrap=True)
        return 2
    except RuntimeFailure as exc:  # the run could not go on (a full disk): not a bug
        err_console.print(f"mvdeploy: error: {exc}", markup=False, highlight=False,
                          soft_wrap=True)
        return 1
    except (KeyboardInterrupt, click.Abort) as exc:  # click turns Ctrl-C into Abort
        stopped = exc if isinstance(exc, Terminated) else exc.__cause__
        if isinstance(stopped, Terminated):
            err_console.print(f"mvdeploy: {stopped.said}: nothing half-written was kept",
                              markup=False, highlight=False)
            return _exit_code(type(stopped))
        err_console.print("mvdeploy: interrupted", markup=False, highlight=False)
        return 130
    except SystemExit as exc:  # commands signal "ran, but something failed" with exit 1
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # a bug or a converter crash, not a user mistake
        if os.environ.get("MVDEPLOY_DEBUG"):
            raise
        if is_no_space(exc):  # a write this code does not route through mvdeploy.files
            where = getattr(exc, "filename", None) or "the output path"
            err_console.print(f"mvdeploy: error: {NoSpaceError(where)}", markup=False,
                              highlight=False, soft_wrap=True)
            return 1
        first = str(exc).strip().splitlines()
        err_console.print(f"mvdeploy: internal error: {type(exc).__name__}: "
                          f"{first[0] if first else ''} (set MVDEPLOY_DEBUG=1 for the traceback)",
                          markup=False, highlight=False, soft_wrap=True)
        return 1
    finally:  # --verbose holds for this run only (tests call run() many times in one process)
        if verbose is None:
            os.environ.pop(VERBOSE_ENV, None)
        else:
            os.environ[VERBOSE_ENV] = verbose
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
