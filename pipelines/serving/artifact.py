"""The model artifact: a content hash over its files, and loading it only if the hash matches."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

from pipelines.serving.manifest import ManifestError

_CHUNK = 1 << 20


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(directory: Path) -> str:
    """A sha256 over every file of ``directory``: relative paths and contents, in sorted order.

    Renaming, adding, removing or changing any file changes it; where the folder lives does not.
    """
    if not directory.is_dir():
        raise ManifestError(f"{directory}: model artifact folder not found")
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        digest.update(f"{relative}\0{_file_sha256(path)}\n".encode())
    return digest.hexdigest()


def verify(directory: Path, expected_sha256: str) -> None:
    """Check the artifact against the hash recorded at package time.

    Raises:
        ManifestError: The hashes differ (the artifact changed after packaging).
    """
    actual = tree_sha256(directory)
    if actual != expected_sha256:
        raise ManifestError(
            f"model artifact integrity check failed for {directory}: sha256 is {actual}, "
            f"but {expected_sha256} was recorded at package time; refusing to serve it"
        )


def load_estimator(
    directory: Path, model_file: str, serialization_format: str, expected_sha256: str
) -> Any:
    """Verify the artifact, then deserialize the scikit-learn estimator in it.

    The types in a skops file are trusted only because the whole folder matched the hash
    recorded when the registered version was packaged.

    Raises:
        ManifestError: The integrity check failed or the file cannot be read.
    """
    verify(directory, expected_sha256)
    path = directory / model_file
    if serialization_format == "skops":
        import skops.io

        return skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    with path.open("rb") as handle:
        return pickle.load(handle)  # integrity-checked above
