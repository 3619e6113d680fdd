"""mvdeploy: a deployment toolkit for MobileViT (Core ML, ONNX, TFLite/LiteRT, ExecuTorch).

Importing the package stays light: backends and their heavy dependencies load on demand.
`mvdeploy.export(...)` and `mvdeploy.benchmark(...)` are the one-call API (mvdeploy.api).
"""

__version__ = "0.1.0"


def export(*args, **kwargs):
    """See mvdeploy.api.export."""
    from mvdeploy.api import export as _export

    return _export(*args, **kwargs)


def benchmark(**kwargs):
    """See mvdeploy.api.benchmark."""
    from mvdeploy.api import benchmark as _benchmark

    return _benchmark(**kwargs)
