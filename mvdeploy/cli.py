"""The `mvdeploy` command: parse, call the library, print. Errors become one line and exit 2."""

from __future__ import annotations

import json
import sys

import click
from rich import box
from rich.console import Console
from rich.table import Table

from mvdeploy import __version__
from mvdeploy.errors import MvdeployError

console = Console()
err_console = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mvdeploy")
def app() -> None:
    """Export, validate and benchmark MobileViT for Core ML, ONNX and TFLite (LiteRT)."""


@app.command()
@click.option("--patch", "-p", "patch", multiple=True, metavar="SPEC",
              help="Patch preset (A, B) or per-stage sizes (8,4,2 or 2x4,2,2); repeat for "
                   "several. Default: A and B.")
@click.option("--resolution", "-r", default="256", show_default=True, metavar="HxW",
              help="Input size: HEIGHTxWIDTH or one number, multiples of 32.")
@click.option("--weights", "-w", metavar="PATH",
              help="Describe the model this checkpoint holds (Hugging Face directory, ml-cvnets "
                   ".pt, or mvdeploy .safetensors) instead of listing every variant.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(patch: tuple[str, ...], resolution: str, weights: str | None, as_json: bool) -> None:
    """List the MobileViT variants with parameters and MACs per patch configuration."""
    from mvdeploy.models import (
        create_model,
        format_patch_sizes,
        interpolated_stages,
        list_models,
        parse_patch_sizes,
        parse_resolution,
    )
    from mvdeploy.models.macs import count_macs

    height, width = parse_resolution(resolution)
    presets = [parse_patch_sizes(p) for p in (patch or ("A", "B"))]
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
    for name in [checkpoint.cfg.name] if checkpoint else list_models():
        for patches in presets:
            model = create_model(name, patch_sizes=patches,
                                 num_classes=checkpoint.num_classes if checkpoint else None)
            macs = count_macs(model, height, width)
            rows.append({
                "model": name,
                "patch_sizes": [list(p) for p in patches],
                "patch": format_patch_sizes(patches),
                "resolution": [height, width],
                "params": sum(p.numel() for p in model.parameters()),
                "gmacs": round(macs.total / 1e9, 4),
                "attention_gmacs": round(macs.attention / 1e9, 4),
                "resized_stages": [8 * 2**i for i in interpolated_stages(patches, height, width)],
                "paper_params": model.cfg.paper_params,
                "paper_gmacs": model.cfg.paper_gmacs,
                "paper_top1": model.cfg.paper_top1,
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
    table = Table(title=f"MobileViT v1 at {height}x{width} ({classes} classes)",
                  box=box.SIMPLE_HEAD)
    for col in ("model", "patch", "params", "GMACs", "attn", "resized", "paper"):
        table.add_column(col, justify="left" if col in ("model", "patch") else "right",
                         no_wrap=True)
    for r in rows:
        resized = ",".join(map(str, r["resized_stages"])) or "-"
        table.add_row(r["model"], r["patch"], f"{r['params']:,}", f"{r['gmacs']:.3f}",
                      f"{r['attention_gmacs']:.3f}", resized,
                      f"{r['paper_gmacs']:.2f} {r['paper_top1']:.1f}%")
    console.print(table)
    console.print("GMACs include the attention matmuls; attn: QK^T and AV alone. resized: "
                  "strides of the stages whose feature map the patch does not divide, so it is "
                  "resized up and back (extra latency, see README). paper: published GMACs and "
                  "ImageNet top-1 at 256x256, patch A.")


@app.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def doctor(as_json: bool) -> None:
    """Show which converters and runtimes import, and what to install for the rest."""
    from mvdeploy.doctor import as_dict, diagnose

    components, backends = diagnose()
    if as_json:
        print(json.dumps(as_dict(components, backends), indent=2))
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


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; user mistakes become one line on stderr and 2."""
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
    except (KeyboardInterrupt, click.Abort):
        err_console.print("mvdeploy: interrupted", markup=False, highlight=False)
        return 130
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())
