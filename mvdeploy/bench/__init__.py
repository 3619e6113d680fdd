"""The latency benchmark harness (`mvdeploy bench`).

    matrix.py    what to measure: configurations from flags or a suite file, and their keys
    stats.py     latency statistics from timed samples
    worker.py    one configuration in its own process: load, first inference, warm-up, timing
    targets.py   where it runs: cpu, cuda, android (adb + benchmark_model), apple (macOS)
    android.py   adb and LiteRT's benchmark_model, parsed into the same result schema
    roofline.py  this machine's GEMM peak, for the fraction of peak each runtime reaches
    artifacts.py export (or reuse from a cache keyed by config hash) before timing; peer models
    runner.py    the interleaved schedule, subprocesses, crash and Ctrl-C handling
    report.py    JSON (versioned schema), CSV, Markdown, PNG plots, --compare
"""
