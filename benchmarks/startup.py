"""How long `mvdeploy` takes to start, and what it imports before it does any work.

Each command runs in a fresh interpreter, `--repeats` times, one after another; the figures are
medians of wall time. `import mvdeploy.cli` is also measured with `python -X importtime`
(cumulative microseconds of the module, which excludes the interpreter's own start), and the
heavy packages it pulled in are listed (none expected: torch, converters and runtimes load
only inside the command that needs them).

    python benchmarks/startup.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mvdeploy.files import write_atomic

HEAVY = ("torch", "onnx", "onnxruntime", "coremltools", "litert_torch", "ai_edge_litert",
         "executorch", "transformers", "timm")
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "mvdeploy --help": [sys.executable, "-m", "mvdeploy.cli", "--help"],
    "mvdeploy export --help": [sys.executable, "-m", "mvdeploy.cli", "export", "--help"],
    "mvdeploy doctor --json": [sys.executable, "-m", "mvdeploy.cli", "doctor", "--json"],
    "mvdeploy models --json": [sys.executable, "-m", "mvdeploy.cli", "models", "--json"],
}


def wall(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - began


def import_profile() -> dict:
    code = f"import sys, mvdeploy.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], check=True,
                          capture_output=True, text=True)
    rows = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:")]
    cumulative = {name.strip(): int(total) for _, total, name in
                  ((r[0], r[1], r[2]) for r in rows[1:] if r[1].strip().isdigit())}
    top = sorted(((n, us) for n, us in cumulative.items() if "." not in n.strip()),
                 key=lambda item: -item[1])[:8]
    return {"mvdeploy.cli_ms": round(cumulative.get("mvdeploy.cli", 0) / 1000, 1),
            "heavy_imported": [m for m in done.stdout.strip().split(",") if m],
            "largest_top_level_ms": {n: round(us / 1000, 1) for n, us in top}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times = {label: [wall(cmd) for _ in range(args.repeats)] for label, cmd in COMMANDS.items()}
    result = {"repeats": args.repeats, "python": sys.version.split()[0],
              "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
              "range_s": {k: [round(min(v), 3), round(max(v), 3)] for k, v in times.items()},
              "import": import_profile()}
    lines = ["# Start-up time", "",
             f"`python benchmarks/startup.py --out benchmarks/results` ({args.repeats} runs "
             "each, fresh interpreter, median wall time).", "",
             "| command | median s | range s |", "|---|---|---|"]
    lines += [f"| `{k}` | {result['median_s'][k]} | {result['range_s'][k][0]} to "
              f"{result['range_s'][k][1]} |" for k in COMMANDS]
    imp = result["import"]
    lines += ["", f"`import mvdeploy.cli`: {imp['mvdeploy.cli_ms']} ms (`python -X importtime`, "
              "cumulative); heavy packages imported: "
              + (", ".join(imp["heavy_imported"]) or "none") + ".", "",
              "Largest top-level imports of `import mvdeploy.cli` (ms, cumulative): "
              + ", ".join(f"{n} {ms}" for n, ms in imp["largest_top_level_ms"].items())
              + ".",
              "", "`mvdeploy models` reads parameter and MAC counts from the table shipped "
              "with mvdeploy (mvdeploy/models/counts.json, checked against the network by a "
              "test) and imports no torch; for a patch configuration, resolution or class "
              "count the table lacks it builds the network and counts. `doctor` imports every "
              "converter and runtime to prove it loads; `--help` and `export --help` import "
              "none of them."]
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "startup.json", json.dumps(result, indent=2).encode())
    write_atomic(args.out / "startup.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
