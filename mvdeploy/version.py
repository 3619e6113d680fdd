"""mvdeploy's version, in a module of its own: low layers (manifests, reports, Core ML's
author field) read it without importing the package top (which reaches up to the API)."""

__version__ = "0.1.0"
