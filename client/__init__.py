"""The demo client: ``python -m client --as alice get report.txt``."""
