"""``mlops predict-batch``: score a CSV or Parquet file with one exact registered version.

The version is named explicitly (``--version N``) or read from an environment's deploy state
(``deploy/<env>.yaml``); nothing resolves "latest". Rows are checked against the model's input
signature chunk by chunk while they are scored: any bad row makes the run fail with every
problem's line number, and nothing is written. Output goes to a temp file in the target folder
and is renamed into place only when complete, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines import tracking
from pipelines.config.base import ConfigError
from pipelines.config.loader import ConfigSet
from pipelines.data import DataError
from pipelines.inference import predict
from pipelines.metrics import Task
from pipelines.workdir import Workdir

log = logging.getLogger(__name__)

FileFormat = Literal["csv", "parquet"]
ROW_NUMBER = "row_number"
PREDICTION = "prediction"
PROBABILITY = "probability"
MAX_REPORTED = 50
# MLflow column types, by how they are checked.
_NUMERIC = {"double", "float", "long", "integer"}
_INTEGRAL = {"long", "integer"}


class BatchInputError(DataError):
    """The input file does not fit the model: the problems, each with its line or row."""

    def __init__(self, path: Path, problems: list[RowProblem], total: int, unit: str) -> None:
        self.problems = problems
        self.total = total
        shown = "\n  ".join(p.describe(unit) for p in problems)
        more = f"\n  ... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(f"{path}: {total} problem(s); nothing was written:\n  {shown}{more}")


@dataclass(frozen=True)
class RowProblem:
    """One bad value: where it is (file line for CSV, 1-based row for Parquet) and why."""

    line: int
    column: str
    problem: str

    def describe(self, unit: str) -> str:
        """``line 7, column 'x': not a number ('abc')``."""
        return f"{unit} {self.line}, column '{self.column}': {self.problem}"


@dataclass(frozen=True)
class InputColumn:
    """One model input from the MLflow signature."""

    name: str
    type: str
    required: bool = True
    categories: frozenset[str] | None = None
    unknown: str = "refuse"


class BatchResult(BaseModel):
    """What was scored, with which exact model version, and where the predictions are."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    input: str
    output: str
    model_name: str
    model_version: str
    model_uri: str
    resolved_from: str
    task: Task
    rows: int
    chunks: int
    columns: list[str]
    seconds: float


# --------------------------------------------------------------------------- row checks


def check_rows(
    frame: pd.DataFrame, columns: list[InputColumn], first_line: int
) -> tuple[pd.DataFrame, list[RowProblem]]:
    """Check one chunk against the model inputs and convert it to their types.

    Args:
        frame: The chunk as read (CSV cells are strings; Parquet keeps its types).
        columns: The model's inputs, in signature order.
        first_line: The line (or row) number of the chunk's first row.

    Returns:
        The inputs in signature order and converted types, and the problems found (rows with
        problems are not removed: a chunk with problems must not be scored).
    """
    problems: list[RowProblem] = []
    converted: dict[str, pd.Series] = {}
    lines = np.arange(first_line, first_line + len(frame))
    for column in columns:
        if column.name not in frame.columns:
            problems.append(RowProblem(first_line, column.name, "column is missing"))
            continue
        raw = frame[column.name].reset_index(drop=True)
        missing = raw.isna().to_numpy()
        if column.type in _NUMERIC:
            values, bad, reason = _numeric(raw, column.type)
        elif column.type == "boolean":
            values, bad, reason = _boolean(raw)
        else:
            values, bad, reason = raw.astype("string"), np.zeros(len(raw), bool), ""
            if column.categories is not None:
                outside = ~missing & ~values.isin(column.categories).fillna(False).to_numpy()
                if column.unknown == "refuse":
                    bad = outside
                    reason = f"unknown category; expected one of {sorted(column.categories)}"
                elif outside.any():
                    log.warning(
                        "column '%s': %d value(s) outside the known categories, scored (count)",
                        column.name,
                        int(outside.sum()),
                    )
            values = values.astype(object).where(values.notna(), None)
        converted[column.name] = values
        if column.required:
            for index in np.flatnonzero(missing):
                problems.append(RowProblem(int(lines[index]), column.name, "missing value"))
        for index in np.flatnonzero(bad & ~missing):
            cell = raw.iloc[index]
            problems.append(RowProblem(int(lines[index]), column.name, f"{reason} ({cell!r})"))
    problems.sort(key=lambda p: (p.line, p.column))
    checked = pd.DataFrame(converted, columns=[c.name for c in columns if c.name in converted])
    return checked, problems


def _exact(raw: pd.Series, numbers: pd.Series) -> pd.Series:
    """``numbers`` with every text cell re-read exactly, as Python reads a float.

    ``pd.to_numeric`` parses text with a fast reader that can miss the nearest double by an
    ulp; a tree model whose threshold lies in between would then score a CSV row differently
    from the same row in memory (or in a JSON request).
    """
    if not (pd.api.types.is_object_dtype(raw) or pd.api.types.is_string_dtype(raw)):
        return numbers
    cells = raw.to_numpy(dtype=object)
    exact = numbers.to_numpy(copy=True)
    for index in np.flatnonzero(np.isfinite(exact)):
        cell = cells[index]
        if isinstance(cell, str):
            try:
                exact[index] = float(cell)
            except ValueError:
                continue
    return pd.Series(exact, index=numbers.index, name=numbers.name)


def _numeric(raw: pd.Series, kind: str) -> tuple[pd.Series, np.ndarray, str]:
    if pd.api.types.is_bool_dtype(raw):
        return raw, np.ones(len(raw), bool), f"expected {kind}, got a boolean"
    numbers = _exact(raw, pd.to_numeric(raw, errors="coerce").astype("float64"))
    values = numbers.to_numpy()
    bad = ~np.isfinite(values)
    if kind in _INTEGRAL:
        fractional = np.isfinite(values) & (np.mod(values, 1) != 0)
        if fractional.any():
            return numbers, bad | fractional, f"expected a whole number for {kind}"
        return numbers.astype("Int64"), bad, f"expected {kind}"
    return numbers, bad, "not a finite number"


def _boolean(raw: pd.Series) -> tuple[pd.Series, np.ndarray, str]:
    if pd.api.types.is_bool_dtype(raw):
        return raw, np.zeros(len(raw), bool), ""
    words = raw.astype("string").str.strip().str.lower()
    mapping = {"true": True, "false": False, "1": True, "0": False}
    values = words.map(mapping)
    return values, values.isna().to_numpy(), "expected true/false"


# --------------------------------------------------------------------------- reading


def file_format(path: Path, explicit: FileFormat | None = None) -> FileFormat:
    """The format given, else the file's extension.

    Raises:
        ConfigError: The extension is neither CSV nor Parquet.
    """
    if explicit is not None:
        return explicit
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    raise ConfigError(f"{path}: unknown file type '{suffix}'; expected .csv or .parquet")


@dataclass(frozen=True)
class Chunk:
    """Rows of the input and where they start (CSV line, or 1-based Parquet row)."""

    frame: pd.DataFrame
    first_line: int
    row_offset: int
    progress: int


def read_chunks(path: Path, fmt: FileFormat, chunk_size: int) -> tuple[int, Iterator[Chunk]]:
    """The progress total and the chunks of ``path``.

    CSV progress is in bytes read (the file is not counted first), Parquet's in rows. CSV
    line numbers assume one line per record (the header is line 1).
    """
    if fmt == "csv":
        return path.stat().st_size, _csv_chunks(path, chunk_size)
    parquet = pq.ParquetFile(path)
    return parquet.metadata.num_rows, _parquet_chunks(parquet, chunk_size)


def _csv_chunks(path: Path, chunk_size: int) -> Iterator[Chunk]:
    handle: IO[bytes]
    with open(path, "rb") as handle:
        # Cells stay text so that a bad value is reported, not silently turned into NaN.
        reader = pd.read_csv(
            handle, chunksize=chunk_size, dtype=str, keep_default_na=False, na_values=[""]
        )
        offset = 0
        for frame in reader:
            yield Chunk(frame, first_line=offset + 2, row_offset=offset, progress=handle.tell())
            offset += len(frame)


def _parquet_chunks(parquet: pq.ParquetFile, chunk_size: int) -> Iterator[Chunk]:
    offset = 0
    for batch in parquet.iter_batches(batch_size=chunk_size):
        frame = batch.to_pandas()
        offset += len(frame)
        yield Chunk(
            frame,
            first_line=offset - len(frame) + 1,
            row_offset=offset - len(frame),
            progress=offset,
        )


# --------------------------------------------------------------------------- writing


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temp path next to ``path``, renamed onto it only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class _Writer:
    """Appends output chunks to a CSV or Parquet file."""

    def __init__(self, path: Path, fmt: FileFormat) -> None:
        self.path = path
        self.fmt = fmt
        self.parquet: pq.ParquetWriter | None = None
        self.started = False

    def write(self, frame: pd.DataFrame) -> None:
        if self.fmt == "csv":
            frame.to_csv(
                self.path, mode="a" if self.started else "w", header=not self.started, index=False
            )
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.path, table.schema)
            self.parquet.write_table(table.cast(self.parquet.schema))
        self.started = True

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelRef:
    """An exact registered version and how it was named."""

    name: str
    version: str
    resolved_from: str

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``."""
        return f"models:/{self.name}/{self.version}"


def deploy_state_version(root: Path, env: str, model: str | None = None) -> str:
    """The stable version of ``deploy/<env>.yaml`` (:mod:`pipelines.release.state`).

    Args:
        root: The project root.
        env: The environment name.
        model: The registered model name the state must be about, when given.

    Raises:
        ConfigError: There is no deploy state for ``env`` yet, it is invalid, it is about
            another model, or nothing is stable there yet.
    """
    from pipelines.release.state import load_state, state_path

    path = state_path(root, env)
    if not path.is_file():
        raise ConfigError(
            f"no deploy state for env '{env}' yet ({path} does not exist); "
            "use --version N, or deploy to that environment first"
        )
    state = load_state(root, env, model)
    if state.stable is None:
        raise ConfigError(
            f"{path}: field 'stable': env '{env}' has no stable release yet; use --version N"
        )
    return str(state.stable.version)


def resolve_model(
    config: ConfigSet, version: str | None = None, env: str | None = None
) -> ModelRef:
    """The exact version to score with, from ``--version`` or an environment's deploy state.

    Raises:
        ConfigError: Neither or both were given, or the version cannot be determined.
    """
    if (version is None) == (env is None):
        raise ConfigError("give exactly one of --version N or --env NAME")
    name = config.train.registered_model_name
    if env is not None:
        number = deploy_state_version(config.root, env, name)
        return ModelRef(name, number, f"env {env} (deploy/{env}.yaml)")
    assert version is not None
    if not version.isdigit() or int(version) < 1:
        raise ConfigError(f"--version must be a positive integer, got {version!r}")
    return ModelRef(name, str(int(version)), f"version {int(version)}")


@dataclass(frozen=True)
class LoadedModel:
    """The estimator of one registered version and what it expects."""

    estimator: Any
    inputs: list[InputColumn]
    task: Task


def load_model(ref: ModelRef) -> LoadedModel:
    """Load the version from the (already configured) registry, with its input signature.

    Raises:
        ConfigError: The version does not exist or has no input signature.
    """
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info
    from mlflow.tracking import MlflowClient

    try:
        details = MlflowClient().get_model_version(ref.name, ref.version)
        info = get_model_info(ref.uri)
    except MlflowException:
        raise ConfigError(f"registered model '{ref.name}' has no version {ref.version}") from None
    schema = info.signature.inputs if info.signature is not None else None
    if schema is None or not schema.has_input_names():
        raise ConfigError(f"{ref.uri} has no named input signature to check rows against")
    contract = (info.metadata or {}).get("mlops_features") or {}
    inputs = []
    for spec in schema.inputs:
        declared = contract.get(spec.name) or {}
        categories = declared.get("categories")
        inputs.append(
            InputColumn(
                spec.name,
                _type_name(spec),
                getattr(spec, "required", True),
                frozenset(categories) if categories is not None else None,
                declared.get("unknown", "refuse"),
            )
        )
    task = Task(details.tags.get("task", Task.CLASSIFICATION.value))
    return LoadedModel(mlflow.sklearn.load_model(ref.uri), inputs, task)


def _type_name(spec: Any) -> str:
    kind = getattr(spec, "type", None)
    return str(getattr(kind, "name", kind) or "string")


# --------------------------------------------------------------------------- the step


def run(
    config: ConfigSet,
    workdir: Workdir,
    input_path: Path,
    output_path: Path,
    *,
    version: str | None = None,
    env: str | None = None,
    chunk_size: int = 50_000,
    input_format: FileFormat | None = None,
    show_progress: bool = True,
) -> BatchResult:
    """Score ``input_path`` with one exact registered version and write the predictions.

    The output has the id column (``schema.id_column`` of ``data.yaml`` if set, else
    ``row_number``, 1-based), ``prediction`` and, for binary classifiers, ``probability``
    of the positive class; classifiers with more classes get one ``probability_<class>``
    column per class instead, in the model's class order. Its format follows its
    extension (.csv or .parquet).

    Raises:
        ConfigError: Bad arguments, unknown version, no deploy state for ``env``.
        BatchInputError: Rows do not fit the model's signature (nothing is written).
        DataError: The input cannot be read.
    """
    started = time.monotonic()
    if chunk_size < 1:
        raise ConfigError(f"chunk size must be at least 1, got {chunk_size}")
    if not input_path.is_file():
        raise ConfigError(f"input file not found: {input_path}")
    fmt_in = file_format(input_path, input_format)
    fmt_out = file_format(output_path)
    if output_path.resolve() == input_path.resolve():
        raise ConfigError("--output must not be the input file")
    ref = resolve_model(config, version, env)
    tracking.configure(config, workdir)
    model = load_model(ref)
    id_column = config.data.schema_.id_column
    unit = "line" if fmt_in == "csv" else "row"

    total, chunks = read_chunks(input_path, fmt_in, chunk_size)
    problems: list[RowProblem] = []
    problem_count = rows = count = 0
    progress = Progress(
        TextColumn("[bold]scoring[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not show_progress,
    )
    with progress, atomic_output(output_path) as tmp:
        task_id = progress.add_task(input_path.name, total=total)
        writer = _Writer(tmp, fmt_out)
        try:
            for chunk in _guarded(chunks, input_path, fmt_in):
                count += 1
                frame, found = check_rows(chunk.frame, model.inputs, chunk.first_line)
                if id_column is not None and id_column not in chunk.frame.columns:
                    found.insert(0, RowProblem(chunk.first_line, id_column, "column is missing"))
                if found or problem_count:
                    # Keep checking to report every bad row, but score nothing more.
                    problem_count += len(found)
                    problems += found[: MAX_REPORTED - len(problems)]
                else:
                    writer.write(_predictions(model, frame, chunk, id_column))
                rows += len(chunk.frame)
                progress.update(task_id, completed=chunk.progress)
        finally:
            writer.close()
        if problem_count:
            raise BatchInputError(input_path, problems, problem_count, unit)
        if not writer.started:
            raise DataError(f"{input_path}: no rows to score; nothing was written")
    log.info("scored %d rows of %s with %s into %s", rows, input_path, ref.uri, output_path)
    columns = [id_column or ROW_NUMBER, PREDICTION, *probability_columns(model.estimator)]
    return BatchResult(
        input=str(input_path),
        output=str(output_path),
        model_name=ref.name,
        model_version=ref.version,
        model_uri=ref.uri,
        resolved_from=ref.resolved_from,
        task=model.task,
        rows=rows,
        chunks=count,
        columns=columns,
        seconds=round(time.monotonic() - started, 3),
    )


def _guarded(chunks: Iterator[Chunk], path: Path, fmt: FileFormat) -> Iterator[Chunk]:
    try:
        yield from chunks
    except (ValueError, OSError, pd.errors.ParserError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from None


def _predictions(
    model: LoadedModel, frame: pd.DataFrame, chunk: Chunk, id_column: str | None
) -> pd.DataFrame:
    result = predict(model.estimator, frame, model.task)
    if id_column is not None:
        ids = chunk.frame[id_column].reset_index(drop=True)
        out = pd.DataFrame({id_column: ids})
    else:
        start = chunk.row_offset + 1
        out = pd.DataFrame({ROW_NUMBER: np.arange(start, start + len(frame), dtype="int64")})
    out[PREDICTION] = result.values
    if result.probabilities is not None and result.classes is not None:
        if len(result.classes) == 2:
            out[PROBABILITY] = result.probabilities[:, 1]
        else:
            for name, column in zip(
                probability_columns(model.estimator), result.probabilities.T, strict=True
            ):
                out[name] = column
    return out


def probability_columns(estimator: Any) -> list[str]:
    """The probability column names a classifier's output gets (none without predict_proba).

    Two classes: one ``probability`` (of the second class, the positive one). More: one
    ``probability_<class>`` per class, in the estimator's ``classes_`` order.
    """
    if not hasattr(estimator, "predict_proba") or not hasattr(estimator, "classes_"):
        return []
    classes = list(estimator.classes_)
    if len(classes) == 2:
        return [PROBABILITY]
    return [f"{PROBABILITY}_{c}" for c in classes]
