"""The demo services: ``documents`` (front) and ``storage`` (back). Run ``python -m server``."""
