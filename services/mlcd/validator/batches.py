"""Reading an arrived data batch: which format, and whether it parses into a table (no I/O).

pandas is imported with the first batch, so the service starts fast.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mlcd.policy.schema import DataSource

if TYPE_CHECKING:
    import pandas as pd

Format = Literal["csv", "parquet"]
_SUFFIXES: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_PARQUET_MAGIC = b"PAR1"


class Unreadable(Exception):
    """The batch cannot be read as a table; the message is the rejection reason."""


@dataclass(frozen=True)
class Batch:
    frame: pd.DataFrame
    format: Format


def format_of(key: str) -> Format | None:
    """The format the key's suffix names, or None for anything but CSV and Parquet."""
    lowered = key.lower()
    return next((fmt for suffix, fmt in _SUFFIXES.items() if lowered.endswith(suffix)), None)


def parse(raw: bytes, fmt: Format) -> Batch:
    """The batch as a DataFrame; `Unreadable` says why it is not one."""
    if not raw.strip():
        raise Unreadable("the file is empty")
    frame = _parquet(raw) if fmt == "parquet" else _csv(raw)
    if frame.columns.empty:
        raise Unreadable("the file has no columns")
    if frame.empty:
        raise Unreadable(f"the file has a header ({len(frame.columns)} columns) but no rows")
    return Batch(frame, fmt)


def _csv(raw: bytes) -> pd.DataFrame:
    import pandas as pd

    if raw.startswith(_PARQUET_MAGIC):
        raise Unreadable("the file is named .csv but holds Parquet data")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Unreadable(f"not a CSV file: byte {e.start} is not UTF-8 text") from e
    if "\x00" in text:
        raise Unreadable("not a CSV file: it holds binary data")
    try:
        return pd.read_csv(io.StringIO(text))
    except pd.errors.EmptyDataError as e:
        raise Unreadable("the file is empty") from e
    except (pd.errors.ParserError, ValueError) as e:
        raise Unreadable(f"unparsable CSV: {' '.join(str(e).split())}") from e


def _parquet(raw: bytes) -> pd.DataFrame:
    import pandas as pd

    if not (raw.startswith(_PARQUET_MAGIC) and raw.endswith(_PARQUET_MAGIC)):
        raise Unreadable("not a Parquet file: the PAR1 markers are missing")
    try:
        return pd.read_parquet(io.BytesIO(raw))
    except Exception as e:  # pyarrow raises its own tree (ArrowInvalid, OSError…) for a corrupt file
        raise Unreadable(f"unparsable Parquet: {' '.join(str(e).split())}") from e


def results_key(data: DataSource, key: str) -> str:
    """Where the validation result of the batch at `key` is stored: under the policy's results prefix."""
    relative = key.removeprefix(data.prefix)
    return f"{data.prefix}{data.results_prefix}{relative}.json"
