"""Content-addressed feature cache: a frame's features are computed once, ever, per backbone configuration.

:class:`CachedBackbone` wraps a FrozenBackbone. ``embed(frames)`` hashes each frame (BLAKE2b-128 over its shape,
dtype and bytes, channel-first), serves known frames from the HDF5 feature store and runs the backbone only on the
unseen ones, whose features are written back. Rows written by ``pvrw extract`` carry the same hashes, so an extracted
file doubles as a cache.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from pvrw.feature_cache._h5 import FileBusyError
from pvrw.feature_cache.store import HASH_BYTES, FeatureSet, FeatureSpec, FeatureStore, decode, encode

logger = logging.getLogger(__name__)


def channel_first(frames: np.ndarray) -> np.ndarray:
    """uint8 frames (N,3,H,W) or (N,H,W,3) -> contiguous (N,3,H,W)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (N,3,H,W) or (N,H,W,3), got {frames.dtype} {frames.shape}")
    if frames.shape[1] != 3:
        if frames.shape[-1] != 3:
            raise ValueError(f"expected RGB frames (N,3,H,W) or (N,H,W,3), got shape {frames.shape}")
        frames = frames.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(frames)


def hash_frames(frames: np.ndarray) -> np.ndarray:
    """BLAKE2b-128 digest of each channel-first frame (shape and dtype included), as (N, 16) uint8."""
    frames = channel_first(frames)
    header = f"{frames.shape[1:]}|{frames.dtype.str}|".encode()
    out = np.empty((len(frames), HASH_BYTES), dtype=np.uint8)
    for i, frame in enumerate(frames):
        h = hashlib.blake2b(header, digest_size=HASH_BYTES)
        h.update(memoryview(frame).cast("B"))
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out


class _SharedStores:
    """One writable FeatureStore per file per process, shared by every CachedBackbone on it (HDF5 allows one writer)."""

    def __init__(self) -> None:
        self.stores: dict[str, tuple[FeatureStore, int]] = {}

    def acquire(self, path: str) -> FeatureStore:
        key = os.path.realpath(path)
        store, count = self.stores.get(key, (None, 0))
        if store is None:
            store = FeatureStore(path, "a")
        self.stores[key] = (store, count + 1)
        return store

    def release(self, store: FeatureStore) -> None:
        key = os.path.realpath(store.path)
        held, count = self.stores.get(key, (None, 0))
        if held is not store:
            store.close()
            return
        if count <= 1:
            del self.stores[key]
            store.close()
        else:
            self.stores[key] = (store, count - 1)


_SHARED = _SharedStores()
_LIVE: weakref.WeakSet[CachedBackbone] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Flush every open cache when the interpreter exits (buffered rows would otherwise be lost)."""
    for cached in list(_LIVE):
        cached.close()


@dataclass
class CacheStats:
    """Frames served from the cache (``hits``), computed by the backbone (``misses``), and rows written back."""

    hits: int = 0
    misses: int = 0
    written: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class CachedBackbone:
    """A FrozenBackbone whose :meth:`embed` looks frames up by content in an HDF5 file before running the backbone.

    Same interface as the wrapped backbone (``name``, ``fingerprint``, ``resolution``, ``preprocessing``,
    ``output_shape``, ``embed``...). Features are float32 as returned by the backbone; with ``dtype="float16"`` or
    ``"bfloat16"`` they are stored rounded, and misses return the rounded values too, so results do not depend on
    whether a frame was cached.

    :param backbone: a FrozenBackbone (anything with the attributes above and ``embed``).
    :param path: the HDF5 feature file; created if missing. Another process writing it makes this one read-only
        (lookups still work, new features are not written back; a warning says so).
    :param dtype: storage dtype, ``"float32"``, ``"float16"`` or ``"bfloat16"``.
    :param set_name: the set inside the file (default: the backbone's ``feature_set_name``: its name, plus its
        non-default options such as ``tokens=mean``). A set written by a different backbone
        configuration is refused with :class:`~pvrw.feature_cache.FeatureSetMismatchError`.
    :param flush_every: new rows are buffered in memory and appended (flushed, committed) in batches of this size, and
        on :meth:`flush` / :meth:`close` / interpreter exit.
    :param write: ``False`` never writes (lookups only).
    """

    def __init__(
        self,
        backbone: Any,
        path: str | os.PathLike,
        dtype: str = "float32",
        set_name: str | None = None,
        flush_every: int = 256,
        write: bool = True,
    ):
        self.backbone = backbone
        self.path = os.fspath(path)
        self.spec = FeatureSpec.from_backbone(backbone, dtype=dtype)
        self.flush_every = int(flush_every)
        self.stats = CacheStats()
        self.writable = write
        self._set_name = set_name or getattr(backbone, "feature_set_name", self.spec.backbone)
        self._store = self._open_store()
        self._closed = False
        try:
            self._set: FeatureSet | None = self._find_set(self._set_name) if self._store is not None else None
            if self.writable:
                self._store._ensure_swmr()  # from now on other processes can open the file read-only
        except BaseException:
            self.close()
            raise
        self._index: dict[bytes, int] = {}
        if self._set is not None:
            for row, digest in enumerate(self._set.hashes()):
                if digest.any():
                    self._index[digest.tobytes()] = row
        self._pending_rows: list[np.ndarray] = []
        self._pending_hashes: list[bytes] = []
        self._pending_index: dict[bytes, int] = {}
        _LIVE.add(self)

    # --- opening ---
    def _open_store(self) -> FeatureStore | None:
        """The shared writable store; read-only if another process writes the file; None if it cannot be read now."""
        if self.writable:
            try:
                return _SHARED.acquire(self.path)
            except FileBusyError as error:
                logger.warning("%s; feature cache %s is used read-only (new features are not saved)", error, self.path)
                self.writable = False
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"feature cache {self.path} does not exist and write=False (lookups only): check "
                                    "the path, or pass write=True to create it")
        try:
            return FeatureStore(self.path, "r")
        except FileBusyError as error:
            logger.warning("%s; running %s without its feature cache", error, self.spec.backbone)
            return None

    def _find_set(self, name: str) -> FeatureSet | None:
        if name in self._store:
            stored = FeatureSpec.from_attrs(self._store._file["sets"][name])
            self.spec.check_matches(stored, f"feature set {name!r} in {self.path}")
            return self._store.get_set(name)
        if self.writable:
            return self._store.require_set(self.spec, name)
        return None

    # --- the FrozenBackbone interface ---
    def __getattr__(self, name: str) -> Any:
        if name == "backbone":  # not set yet (failure inside __init__)
            raise AttributeError(name)
        return getattr(self.backbone, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Tensor forward pass of the wrapped backbone (not cached: it serves gradients-free batch code paths)."""
        return self.backbone(*args, **kwargs)

    def embed(self, frames: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Features ``(N, *output_shape)`` float32 of uint8 frames (N,3,H,W) or (N,H,W,3); each unseen frame once."""
        frames = channel_first(frames)
        digests = [d.tobytes() for d in hash_frames(frames)]
        out = np.empty((len(frames), *self.spec.output_shape), dtype=np.float32)
        stored_pos, stored_rows, pending_pos, pending_rows = [], [], [], []
        to_compute: dict[bytes, list[int]] = {}
        for i, digest in enumerate(digests):
            row = self._index.get(digest)
            if row is not None:
                stored_pos.append(i)
                stored_rows.append(row)
            elif digest in self._pending_index:
                pending_pos.append(i)
                pending_rows.append(self._pending_index[digest])
            else:
                to_compute.setdefault(digest, []).append(i)
        if stored_pos:
            out[stored_pos] = self._set.read(stored_rows)
        if pending_pos:
            out[pending_pos] = decode(np.stack([self._pending_rows[r] for r in pending_rows]), self.spec.dtype)
        self.stats.hits += len(stored_pos) + len(pending_pos)
        if to_compute:
            firsts = [positions[0] for positions in to_compute.values()]
            kwargs = {} if batch_size is None else {"batch_size": batch_size}
            stored = encode(
                np.asarray(self.backbone.embed(frames[firsts], **kwargs), dtype=np.float32), self.spec.dtype
            )
            values = decode(stored, self.spec.dtype)
            for k, (digest, positions) in enumerate(to_compute.items()):
                out[positions] = values[k]
                if self.writable:
                    self._pending_index[digest] = len(self._pending_rows)
                    self._pending_rows.append(stored[k])
                    self._pending_hashes.append(digest)
            self.stats.misses += sum(len(p) for p in to_compute.values())
            if len(self._pending_rows) >= self.flush_every:
                self.flush()
        return out

    # --- persistence ---
    def flush(self) -> int:
        """Append buffered new features to the file (flushed and committed); returns how many rows were written."""
        if not self._pending_rows:
            return 0
        if self._set is None:
            self._set = self._store.require_set(self.spec, self._set_name)
        start = len(self._set)
        hashes = np.frombuffer(b"".join(self._pending_hashes), dtype=np.uint8).reshape(-1, HASH_BYTES)
        self._set.append(decode(np.stack(self._pending_rows), self.spec.dtype), hashes)
        for offset, digest in enumerate(self._pending_hashes):
            self._index[digest] = start + offset
        written = len(self._pending_rows)
        self.stats.written += written
        self._pending_rows, self._pending_hashes, self._pending_index = [], [], {}
        return written

    def cache_info(self) -> dict[str, Any]:
        """Hits, misses, hit rate, rows written, rows known and the file, for logs."""
        return {
            "path": self.path,
            "set": self._set_name,
            "hits": self.stats.hits,
            "misses": self.stats.misses,
            "hit_rate": self.stats.hit_rate,
            "written": self.stats.written,
            "rows": len(self._index) + len(self._pending_rows),
            "writable": self.writable,
        }

    def close(self) -> None:
        """Write buffered rows and release the file (idempotent)."""
        if self.__dict__.get("_closed", True):  # closed, or __init__ failed before opening
            return
        self._closed = True
        store = self._store
        if store is None:
            return
        try:
            if self.writable and self.__dict__.get("_pending_rows"):
                self.flush()
        finally:
            if self.writable:
                _SHARED.release(store)
            else:
                store.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # never raise from the garbage collector; an unflushed tail is only lost cache rows
            logger.exception("could not flush feature cache %s", self.__dict__.get("path"))

    def __enter__(self) -> CachedBackbone:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.stats
        return f"CachedBackbone({self.spec.backbone!r}, {self.path!r}, hits={s.hits}, misses={s.misses})"
