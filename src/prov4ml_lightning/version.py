"""The version of prov4ml-lightning (a leaf: the core reads it without importing the package)."""

__version__ = "0.1.0"
