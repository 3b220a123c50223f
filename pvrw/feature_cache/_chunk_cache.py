"""Fast random row reads from a chunked, append-only HDF5 dataset (the feature store's sampler)."""

from __future__ import annotations

from collections.abc import Iterator

import h5py
import numpy as np


class ChunkCache:
    """Serves arbitrary row indices from a chunked dataset by reading whole chunks once and gathering with NumPy.

    Only chunks entirely below the committed row count are cached (committed rows never change, so the cache never
    goes stale). When the chunks a batch needs exceed the budget, that batch is read chunk-run by chunk-run instead.
    """

    def __init__(self, dataset: h5py.Dataset, cache_bytes: int):
        self.dataset = dataset
        self.rows = int(dataset.chunks[0]) if dataset.chunks else 1024
        row_shape = dataset.shape[1:]
        chunk_bytes = self.rows * int(np.prod(row_shape, dtype=np.int64)) * dataset.dtype.itemsize
        self.n_slots = int(max(0, cache_bytes // max(1, chunk_bytes)))
        self.slab: np.ndarray | None = None
        self.slot_of_chunk = np.full(0, -1, dtype=np.int64)
        self.chunk_of_slot = np.full(self.n_slots, -1, dtype=np.int64)
        self.next_slot = 0

    def _read_runs(self, chunks: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (chunk ids, data) for runs of consecutive chunk ids, one h5py read per run."""
        breaks = np.flatnonzero(np.diff(chunks) != 1) + 1
        for run in np.split(chunks, breaks):
            data = self.dataset[run[0] * self.rows : (run[-1] + 1) * self.rows]
            yield run, data.reshape(len(run), self.rows, *data.shape[1:])

    def gather(self, indices: np.ndarray, n_committed: int) -> np.ndarray:
        chunk = indices // self.rows
        offset = indices % self.rows
        n_full = n_committed // self.rows
        in_full = chunk < n_full
        if self.n_slots and len(self.slot_of_chunk) >= n_full and in_full.all():
            slots = self.slot_of_chunk[chunk]
            if (slots >= 0).all():  # the fast path once warm: one NumPy gather
                return self.slab[slots, offset]
        out = np.empty((len(indices), *self.dataset.shape[1:]), dtype=self.dataset.dtype)
        if (~in_full).any():  # rows of the last, partly committed chunk: read directly, never cached
            tail_start = n_full * self.rows
            tail = self.dataset[tail_start:n_committed]
            out[~in_full] = tail[indices[~in_full] - tail_start]
        needed = np.unique(chunk[in_full])
        if len(needed) == 0:
            return out
        if len(needed) > self.n_slots:
            self._gather_uncached(needed, chunk, offset, in_full, out)
            return out
        if len(self.slot_of_chunk) < n_full:
            grown = np.full(max(n_full, 2 * len(self.slot_of_chunk)), -1, dtype=np.int64)
            grown[: len(self.slot_of_chunk)] = self.slot_of_chunk
            self.slot_of_chunk = grown
        missing = needed[self.slot_of_chunk[needed] < 0]
        if len(missing):
            self._load(missing, needed)
        slots = self.slot_of_chunk[chunk[in_full]]
        out[in_full] = self.slab[slots, offset[in_full]]
        return out

    def _load(self, missing: np.ndarray, needed: np.ndarray) -> None:
        if self.slab is None:
            self.slab = np.empty((self.n_slots, self.rows, *self.dataset.shape[1:]), dtype=self.dataset.dtype)
        protected = np.zeros(self.n_slots, dtype=bool)
        present = self.slot_of_chunk[needed]
        protected[present[present >= 0]] = True
        order = (np.arange(self.n_slots) + self.next_slot) % self.n_slots
        victims = order[~protected[order]][: len(missing)]
        self.next_slot = int((victims[-1] + 1) % self.n_slots)
        evicted = self.chunk_of_slot[victims]
        self.slot_of_chunk[evicted[evicted >= 0]] = -1
        self.chunk_of_slot[victims] = missing
        self.slot_of_chunk[missing] = victims
        for run, data in self._read_runs(missing):
            self.slab[self.slot_of_chunk[run]] = data

    def _gather_uncached(self, needed, chunk, offset, in_full, out) -> None:
        positions = np.flatnonzero(in_full)
        order = positions[np.argsort(chunk[positions], kind="stable")]
        sorted_chunks = chunk[order]
        for run, data in self._read_runs(needed):
            lo, hi = np.searchsorted(sorted_chunks, [run[0], run[-1] + 1])
            sel = order[lo:hi]
            out[sel] = data[chunk[sel] - run[0], offset[sel]]
