"""Raw per-request rows: the run's ground truth, one CSV line per request.

Locust's own statistics stop the clock at the response headers for a streamed body, and it
rounds what it stores into buckets; neither is acceptable for TTFT percentiles. So every Locust
process appends one row per finished request to its own `rows-w<index>.csv` in the run folder,
with full-precision seconds and every inter-chunk gap, and all percentiles are computed from the
merged rows (stats.py). Times are `time.perf_counter()` differences inside one process; the
absolute `start_unix_s` (wall clock) only places rows on a common time axis for plots.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import IO

ROW_GLOB = "rows-w*.csv"
MERGED = "rows.csv"


@dataclass(frozen=True)
class Row:
    seq: int
    worker: int
    tenant: str
    step: int
    start_unix_s: float
    lag_s: float  # actual send time minus scheduled time (open loop); 0 for closed loop
    status: int  # HTTP status; 0 when the connection failed
    error: str  # "" on success
    ttft_s: float  # NaN when no token arrived
    e2e_s: float
    tpot_s: float  # NaN when fewer than 2 output tokens
    prompt_tokens: int  # from the server's usage block; -1 when absent
    completion_tokens: int  # from usage; -1 when absent
    content_chunks: int
    itl_s: str  # space-separated gaps between content chunks, seconds

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    def gaps(self) -> list[float]:
        return [float(x) for x in self.itl_s.split()] if self.itl_s else []


FIELD_NAMES = [f.name for f in fields(Row)]
_FLOAT = {"start_unix_s", "lag_s", "ttft_s", "e2e_s", "tpot_s"}
_INT = {"seq", "worker", "step", "status", "prompt_tokens", "completion_tokens", "content_chunks"}


class RowWriter:
    """Appends rows to one CSV file, flushed per row so a killed process loses at most one."""

    def __init__(self, path: Path) -> None:
        new = not path.exists()
        self._f: IO[str] = path.open("a", newline="", buffering=1)
        self._w = csv.writer(self._f)
        if new:
            self._w.writerow(FIELD_NAMES)

    def write(self, row: Row) -> None:
        self._w.writerow([_fmt(v) for v in astuple(row)])

    def close(self) -> None:
        self._f.close()


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v


def _parse(rec: dict[str, str]) -> Row:
    vals: dict[str, object] = {}
    for k, v in rec.items():
        if k in _FLOAT:
            vals[k] = float(v)
        elif k in _INT:
            vals[k] = int(v)
        else:
            vals[k] = v
    return Row(**vals)  # type: ignore[arg-type]


def read_file(path: Path) -> Iterator[Row]:
    with path.open(newline="") as f:
        for rec in csv.DictReader(f):
            if None in rec or any(v is None for v in rec.values()):
                continue  # a line cut short by a kill
            yield _parse(rec)


def read_run(run_dir: Path) -> list[Row]:
    """All rows of a run: the merged `rows.csv` if the run finished, else the workers' files."""
    merged = run_dir / MERGED
    paths = [merged] if merged.exists() else sorted(run_dir.glob(ROW_GLOB))
    rows: list[Row] = []
    for path in paths:
        rows.extend(read_file(path))
    rows.sort(key=lambda r: r.start_unix_s)
    return rows


def merge(run_dir: Path) -> int:
    """Replace the workers' files by one `rows.csv` sorted by start time; returns the row count."""
    parts = sorted(run_dir.glob(ROW_GLOB))
    rows = read_run(run_dir)
    w = RowWriter(run_dir / MERGED)
    for r in rows:
        w.write(r)
    w.close()
    for p in parts:
        p.unlink()
    return len(rows)
