"""Typed configuration: every schema of ``configs/`` and the one loader that reads them."""
