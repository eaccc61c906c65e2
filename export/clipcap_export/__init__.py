"""clipcap-export: train, evaluate and export ClipCap models as clipcap bundles."""

__version__ = "0.1.0"
