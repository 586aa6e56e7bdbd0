"""Test helpers shared by the test modules (importable as ``helpers.*``)."""
