"""``metrics.csv``: one append-only, flushed row per training episode and per evaluation.

Each row is written with ``flush`` + ``fsync``, so a killed run loses at most the row being written; a partial
last line is dropped when the file is read or truncated. Each checkpoint records how many rows were written before
it; on resume the rows after those are cut (:func:`truncate_metrics`), so that the file describes exactly the
training the checkpoint holds and the resumed run writes each later row once.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

from pvrw.runs.layout import atomic_write_text

FIELDS: tuple[str, ...] = (
    "kind",  # "train" (one finished training episode) or "eval" (mean over the evaluation episodes)
    "frames",  # environment frames so far (agent steps x action repeat)
    "steps",  # agent steps so far (SB3's num_timesteps)
    "episode",  # training episodes finished so far
    "wall_time",  # seconds of training so far, summed over resumes
    "reward",  # episode return (eval: mean over episodes)
    "reward_std",  # eval only: std of the episode returns
    "length",  # episode length in agent steps (eval: mean)
    "success",  # success at any step of the episode (eval: rate), Meta-World's official criterion
    "success_final",  # success at the episode's final step (eval: rate), the stricter criterion
    "dormant_ratio",  # the actor's dormant ratio at that time (DrM only)
    "episodes",  # eval only: number of evaluation episodes
)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


class MetricsWriter:
    """Appends rows to ``metrics.csv`` (writing the header to a new file), each one flushed to disk.

    :ivar rows: rows in the file (those there when it was opened, complete lines, plus those written since)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.rows = 0 if new else max(0, len(_complete_lines(self.path.read_text())) - 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 (kept open for the run)
        self._writer = csv.DictWriter(self._file, fieldnames=FIELDS, extrasaction="raise")
        if new:
            self._writer.writeheader()
            self._sync()

    def write(self, **row: Any) -> None:
        """Append one row; keys are a subset of :data:`FIELDS` (a missing key is an empty cell)."""
        unknown = set(row) - set(FIELDS)
        if unknown:
            raise KeyError(f"unknown metrics column(s) {sorted(unknown)}; columns are {FIELDS}")
        self._writer.writerow({k: _fmt(row.get(k)) for k in FIELDS})
        self._sync()
        self.rows += 1

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse(value: str) -> Any:
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def _complete_lines(text: str) -> list[str]:
    """The lines of a CSV file that were written completely (a kill can leave the last one cut)."""
    lines = text.split("\n")
    return lines[:-1]  # the piece after the last newline is either "" or a partial row


def read_metrics(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """Read ``metrics.csv`` as a list of dicts with numbers parsed (empty cells are ``None``).

    :param kind: keep only rows of this kind ("train" or "eval").
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = _complete_lines(path.read_text())
    rows = []
    for row in csv.DictReader(io.StringIO("\n".join(lines) + "\n")):
        if None in row or any(v is None for v in row.values()):
            continue  # malformed row
        parsed = {k: _parse(v) for k, v in row.items()}
        if kind is None or parsed["kind"] == kind:
            rows.append(parsed)
    return rows


def truncate_metrics(path: str | os.PathLike, max_steps: int | None = None, rows: int | None = None) -> int:
    """Keep the header and the first ``rows`` complete rows (as :class:`MetricsWriter` counts them), or the complete
    rows with ``steps <= max_steps`` (checkpoints that did not record their row count); return how many were kept.

    The file is replaced atomically, so a kill during truncation leaves either the old or the new file.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    lines = _complete_lines(path.read_text())
    if not lines:
        path.unlink()
        return 0
    header, body = lines[0], lines[1:]
    if rows is not None:
        kept = body[:rows]
    else:
        if max_steps is None:
            raise TypeError("truncate_metrics needs max_steps or rows")
        steps_index = header.split(",").index("steps")
        kept = []
        for line in body:
            cells = next(csv.reader([line]), [])
            if len(cells) != len(FIELDS):
                continue
            try:
                if int(cells[steps_index]) <= max_steps:
                    kept.append(line)
            except ValueError:
                continue
    atomic_write_text(path, "\n".join([header, *kept]) + "\n")
    return len(kept)


def last_value(rows: Iterable[dict[str, Any]], key: str) -> Any:
    """The last non-empty value of ``key`` in ``rows`` (``None`` if there is none)."""
    value = None
    for row in rows:
        if row.get(key) is not None:
            value = row[key]
    return value
