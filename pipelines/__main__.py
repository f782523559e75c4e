"""``python -m pipelines`` runs the ``mlops`` CLI."""

from pipelines.cli import app

app(prog_name="mlops")
