"""HDF5 feature store: one file, one or more feature sets, each tied to the backbone that wrote it.

Layout of a ``pvrw.features`` file::

    /                      attrs: pvrw_format, pvrw_format_version, writer_pid, writer_host
    /sets/<name>/          attrs: backbone, fingerprint, resolution, preprocessing, output_shape, dtype, created
        features           (N, *output_shape), float32 | float16 | uint16 (bfloat16 bits); chunked, compressed
        frame_hash         (N, 16) uint8, BLAKE2b-128 of each source frame (content-cache key)
        committed          (1,) int64, rows readers may trust (written after the data)
    /episodes/             optional, written by extraction: the source episode dataset's episode boundaries
        frame_start, num_frames, committed;  attrs: source_uuid, source_path
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from pvrw.feature_cache import _h5
from pvrw.feature_cache._chunk_cache import ChunkCache
from pvrw.feature_cache._h5 import FeatureCacheError, FeatureSetMismatchError, Table
from pvrw.feature_cache._space import FullDiskGuard

FORMAT = "pvrw.features"
DTYPES = ("float32", "float16", "bfloat16")
_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
HASH_BYTES = 16
COMPRESSIONS = ("lzf", "gzip", None)
AUTO_COMPRESS_MAX_ROW_BYTES = 16 << 10


def encode(features: np.ndarray, dtype: str) -> np.ndarray:
    """Convert float features to their storage representation (bfloat16: round-to-nearest-even, kept as uint16 bits)."""
    x = np.asarray(features, dtype=np.float32)
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(x).view(np.uint32)
        rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(
            np.uint16
        )
        return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)
    return x.astype(_STORAGE[dtype], copy=False)


def decode(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Storage representation -> float32."""
    if dtype == "bfloat16":
        return (np.asarray(stored).astype(np.uint32) << np.uint32(16)).view(np.float32)
    return np.asarray(stored, dtype=np.float32)


@dataclass(frozen=True)
class FeatureSpec:
    """What a feature set is tied to; two specs must agree field by field for a set to be reused."""

    backbone: str
    fingerprint: str
    resolution: int
    preprocessing: str
    output_shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"feature dtype {self.dtype!r} is not supported; use one of {', '.join(DTYPES)}")
        object.__setattr__(self, "output_shape", tuple(int(d) for d in self.output_shape))
        object.__setattr__(self, "resolution", int(self.resolution))

    @classmethod
    def from_backbone(cls, backbone: Any, dtype: str = "float32") -> FeatureSpec:
        """The spec of a FrozenBackbone (anything with name/fingerprint/resolution/preprocessing/output_shape)."""
        return cls(
            backbone=str(backbone.name),
            fingerprint=str(backbone.fingerprint),
            resolution=int(backbone.resolution),
            preprocessing=str(backbone.preprocessing),
            output_shape=tuple(backbone.output_shape),
            dtype=dtype,
        )

    @classmethod
    def from_attrs(cls, group: h5py.Group) -> FeatureSpec:
        try:
            return cls(
                backbone=_h5.str_attr(group, "backbone"),
                fingerprint=_h5.str_attr(group, "fingerprint"),
                resolution=int(group.attrs["resolution"]),
                preprocessing=_h5.str_attr(group, "preprocessing"),
                output_shape=tuple(int(d) for d in group.attrs["output_shape"]),
                dtype=_h5.str_attr(group, "dtype"),
            )
        except (KeyError, ValueError) as error:
            raise FeatureCacheError(f"{group.file.filename}:{group.name} has broken set attributes ({error})") from None

    def write_attrs(self, group: h5py.Group) -> None:
        for key in ("backbone", "fingerprint", "resolution", "preprocessing", "dtype"):
            group.attrs[key] = getattr(self, key)
        group.attrs["output_shape"] = np.asarray(self.output_shape, dtype=np.int64)
        group.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def check_matches(self, stored: FeatureSpec, where: str) -> None:
        """Raise :class:`FeatureSetMismatchError` naming every differing field, stored value and requested value."""
        diffs = [
            f"{key}: file has {getattr(stored, key)!r}, requested {getattr(self, key)!r}"
            for key in ("backbone", "fingerprint", "resolution", "preprocessing", "output_shape", "dtype")
            if getattr(stored, key) != getattr(self, key)
        ]
        if diffs:
            raise FeatureSetMismatchError(
                f"{where} was written by another backbone configuration; refusing to mix features ("
                + "; ".join(diffs)
                + "). Use another file, or another set name in this one (CachedBackbone(backbone, path,"
                " set_name=...), which the PVR wrappers accept as their backbone)."
            )


class FeatureSet:
    """One backbone's features in a :class:`FeatureStore`: append (writer) and fast reads (anyone).

    Row ``i`` holds the features of one frame; :meth:`read` serves any index order, :meth:`sample` random batches,
    :meth:`episode` whole episodes in order (when the file has an episode index).
    """

    def __init__(self, store: FeatureStore, name: str, cache_bytes: int = 256 << 20):
        self.store = store
        self.name = name
        self.spec = FeatureSpec.from_attrs(self._group)
        self._cache_bytes = cache_bytes
        self._cache: ChunkCache | None = None
        self._cache_generation = -1
        self._n = int(self._table.counts()[0])

    @property
    def _group(self) -> h5py.Group:
        return self.store._file["sets"][self.name]

    @property
    def _table(self) -> Table:
        """The set's table, re-fetched only after the writer reopened its file (h5py lookups are slow)."""
        if getattr(self, "_table_generation", None) != self.store._file_generation:
            self._cached_table = Table(self._group)
            self._table_generation = self.store._file_generation
        return self._cached_table

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.spec.output_shape

    def __len__(self) -> int:
        return self._n

    def refresh(self) -> int:
        """Re-read the committed row count (a reader following a writer); returns it."""
        self._n = int(self._table.counts(refresh=True)[0])
        if self.store.mode == "r":
            self._dataset().refresh()
            self._group["frame_hash"].refresh()
        return self._n

    def append(self, features: np.ndarray, frame_hashes: np.ndarray | None = None) -> int:
        """Append rows (flushed, then committed); returns the new committed count."""
        features = np.asarray(features)
        if features.shape[1:] != self.spec.output_shape:
            raise ValueError(
                f"features of shape {features.shape[1:]} do not fit set {self.name!r} {self.spec.output_shape}"
            )
        if frame_hashes is None:
            frame_hashes = np.zeros((len(features), HASH_BYTES), dtype=np.uint8)
        if len(frame_hashes) != len(features):
            raise ValueError(f"{len(frame_hashes)} frame hashes for {len(features)} feature rows")
        stored = encode(features, self.spec.dtype)
        with self.store._writing(f"{len(stored)} rows of feature set {self.name!r}", stored.nbytes):
            self.store._ensure_swmr()
            table = self._table
            start = int(table.counts()[0])
            table.append("features", stored, start)
            end = table.append("frame_hash", np.asarray(frame_hashes, dtype=np.uint8), start)
            table.commit([end])
        self._n = end
        return end

    def _dataset(self) -> h5py.Dataset:
        """The features dataset (re-fetched after the writer reopened its file) with its chunk cache."""
        if self.store._file_generation != self._cache_generation:
            self._cache = ChunkCache(self._group["features"], self._cache_bytes)
            self._cache_generation = self.store._file_generation
        return self._cache.dataset

    def read(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed) as float32 ``(len(indices), *output_shape)``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self._n):
            raise IndexError(f"index out of range for feature set {self.name!r} with {self._n} committed rows")
        self._dataset()
        return decode(self._cache.gather(idx, self._n), self.spec.dtype)

    def read_range(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= self._n:
            raise IndexError(f"rows [{start}, {stop}) out of range for feature set {self.name!r} with {self._n} rows")
        return decode(self._dataset()[start:stop], self.spec.dtype)

    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A uniform random batch: (indices, features)."""
        if self._n == 0:
            raise ValueError(f"feature set {self.name!r} is empty")
        rng = rng or np.random.default_rng()
        idx = rng.integers(0, self._n, size=batch_size)
        return idx, self.read(idx)

    def hashes(self) -> np.ndarray:
        """Frame hashes of all committed rows, (N, 16) uint8."""
        return self._group["frame_hash"][: self._n]

    def episode(self, index: int) -> np.ndarray:
        """Features of episode ``index``, in order (needs an episode index and its rows to be committed)."""
        start, length = self.store.episode_bounds(index)
        if start + length > self._n:
            raise IndexError(
                f"episode {index} (rows {start}..{start + length}) is not fully extracted yet for set {self.name!r}"
                f" ({self._n} rows committed); run `pvrw extract` again to finish it"
            )
        return self.read_range(start, start + length)

    def iter_episodes(self) -> Iterator[np.ndarray]:
        for i in range(self.store.num_episodes()):
            start, length = self.store.episode_bounds(i)
            if start + length > self._n:
                return
            yield self.read_range(start, start + length)


class FeatureStore:
    """An HDF5 feature file. ``mode="r"`` (SWMR reader; works while another process appends) or ``"a"`` (writer).

    >>> with FeatureStore("features.h5", "a") as store:                     # doctest: +SKIP
    ...     fs = store.require_set(FeatureSpec.from_backbone(backbone))
    ...     fs.append(backbone.embed(frames))
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r", cache_bytes: int = 256 << 20):
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        self.path = os.fspath(path)
        self.mode = mode
        self._cache_bytes = cache_bytes
        self._swmr = False
        self._file_generation = 0
        self._guard = FullDiskGuard(self.path)
        self._file = self._open()
        self._sets: dict[str, FeatureSet] = {}

    def _open(self) -> h5py.File:
        if self.mode == "r":
            return _h5.open_for_reading(self.path, FORMAT)
        return _h5.open_for_writing(self.path, FORMAT)

    # --- writer-side mode switching: objects can only be created outside SWMR mode ---
    def _ensure_setup_mode(self) -> None:
        if self.mode != "a":
            raise FeatureCacheError(f"{self.path} is open read-only")
        if self._swmr:
            self._file.close()
            self._file = self._open()
            self._swmr = False
            self._file_generation += 1

    def _ensure_swmr(self) -> None:
        if self.mode != "a":
            raise FeatureCacheError(f"{self.path} is open read-only; open it with mode='a' to append")
        if not self._swmr:
            _h5.start_swmr(self._file)
            self._swmr = True

    def _writing(self, what: str, nbytes: int = 0) -> contextlib.AbstractContextManager[None]:
        """Context of a write: a full disk closes the file (committed rows kept) and raises DiskFullError."""
        return self._guard.writing(lambda: self._file, what, nbytes)

    # --- sets ---
    def set_names(self) -> list[str]:
        return sorted(self._file["sets"]) if "sets" in self._file else []

    def __contains__(self, name: str) -> bool:
        return "sets" in self._file and name in self._file["sets"]

    def get_set(self, name: str) -> FeatureSet:
        if name not in self:
            have = ", ".join(self.set_names()) or "none"
            raise KeyError(f"{self.path} has no feature set {name!r} (sets: {have})")
        if name not in self._sets:
            self._sets[name] = FeatureSet(self, name, self._cache_bytes)
        return self._sets[name]

    def require_set(self, spec: FeatureSpec, name: str | None = None, compression: str | None = "auto") -> FeatureSet:
        """The set called ``name`` (default: the backbone name), created if absent, refused if it mismatches ``spec``.

        :param compression: HDF5 filter of a new set's features: ``"lzf"``, ``"gzip"`` (smaller, slower), ``None``,
            or ``"auto"``: lzf for rows up to 16 KiB (ViT CLS, CLS + registers), none for larger rows. Measured in
            benchmarks/bench_feature_cache.py: lzf shrank resnet18 112x112 maps (98 KiB/row) by only ~28% but added
            ~20% CPU time to an extraction; for small rows it costs next to nothing.
        """
        if compression == "auto":
            row_bytes = int(np.prod(spec.output_shape)) * np.dtype(_STORAGE[spec.dtype]).itemsize
            compression = "lzf" if row_bytes <= AUTO_COMPRESS_MAX_ROW_BYTES else None
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression {compression!r} is not supported; use one of 'auto', {COMPRESSIONS}")
        name = name or spec.backbone
        if name in self:
            spec.check_matches(FeatureSpec.from_attrs(self._file["sets"][name]), f"feature set {name!r} in {self.path}")
            return self.get_set(name)
        with self._writing(f"feature set {name!r}"):
            self._ensure_setup_mode()
            group = self._file.require_group("sets").create_group(name)
            spec.write_attrs(group)
            table = Table.create(group, n_slots=1)
            table.create_column("features", spec.output_shape, _STORAGE[spec.dtype], compression=compression)
            table.create_column("frame_hash", (HASH_BYTES,), np.uint8, chunk_rows=4096)
            self._file.flush()
        return self.get_set(name)

    # --- episode index (written by extraction) ---
    def num_episodes(self) -> int:
        if "episodes" not in self._file:
            return 0
        group = self._file["episodes"]
        if self.mode == "r":
            group["frame_start"].refresh()
            group["num_frames"].refresh()
        return int(Table(group).counts(refresh=self.mode == "r")[0])

    def episode_bounds(self, index: int) -> tuple[int, int]:
        n = self.num_episodes()
        if not 0 <= index < n:
            raise IndexError(f"episode {index} out of range: {self.path} indexes {n} episodes")
        group = self._file["episodes"]
        return int(group["frame_start"][index]), int(group["num_frames"][index])

    def source_uuid(self) -> str | None:
        return _h5.str_attr(self._file["episodes"], "source_uuid") if "episodes" in self._file else None

    def require_episode_index(self, source_uuid: str, source_path: str) -> None:
        """Create the episode index tied to a source dataset; refuse a file tied to another source."""
        if "episodes" in self._file:
            have = self.source_uuid()
            if have != source_uuid:
                raise FeatureCacheError(
                    f"{self.path} holds features of another episode dataset (uuid {have}, from"
                    f" {_h5.str_attr(self._file['episodes'], 'source_path')}), not of {source_path}"
                    f" (uuid {source_uuid});"
                    " write to a new --out file"
                )
            return
        with self._writing("the episode index"):
            self._ensure_setup_mode()
            group = self._file.create_group("episodes")
            group.attrs["source_uuid"] = source_uuid
            group.attrs["source_path"] = os.path.abspath(source_path)
            table = Table.create(group, n_slots=1)
            table.create_column("frame_start", (), np.int64, compression=None, chunk_rows=4096)
            table.create_column("num_frames", (), np.int64, compression=None, chunk_rows=4096)
            self._file.flush()

    def append_episodes(self, frame_start: np.ndarray, num_frames: np.ndarray) -> None:
        with self._writing(f"{len(frame_start)} episodes of the episode index", 16 * len(frame_start)):
            self._ensure_swmr()
            table = Table(self._file["episodes"])
            start = int(table.counts()[0])
            table.append("frame_start", np.asarray(frame_start, dtype=np.int64), start)
            end = table.append("num_frames", np.asarray(num_frames, dtype=np.int64), start)
            table.commit([end])

    # --- lifecycle ---
    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._guard.close(self._file)

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({self.path!r}, mode={self.mode!r}, sets={self.set_names()})"
