"""Serving a registered model: request schema, integrity check, batching, prediction log.

Everything the Bento service in ``bentos/`` needs at run time, kept free of MLflow and of
training code so the serving image stays small. Nothing here runs at import.
"""
