"""mvdeploy: a deployment toolkit for MobileViT (Core ML, ONNX, TFLite/LiteRT).

Importing the package stays light: backends and their heavy dependencies load on demand.
"""

__version__ = "0.1.0"
