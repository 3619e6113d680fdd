"""mvdeploy: a deployment toolkit for MobileViT (Core ML, ONNX, TFLite/LiteRT, ExecuTorch).

Importing the package stays light: backends and their heavy dependencies load on demand.
`mvdeploy.export(...)` and `mvdeploy.benchmark(...)` are the one-call API (mvdeploy.api); they
import it when called, the one documented upward import of the layout (docs/architecture.md).
"""

from mvdeploy.version import __version__

__all__ = ["__version__", "benchmark", "export"]


def export(*args, **kwargs):
    """See mvdeploy.api.export."""
    from mvdeploy.api import export as _export

    return _export(*args, **kwargs)


def benchmark(**kwargs):
    """See mvdeploy.api.benchmark."""
    from mvdeploy.api import benchmark as _benchmark

    return _benchmark(**kwargs)
