"""HDF5 feature cache: feature store, content-addressed cached backbone, episode recording and offline extraction.

Public names are imported lazily so that ``import pvrw.feature_cache`` stays cheap.
"""

from __future__ import annotations

from pvrw._lazy import lazy_getattr

_LAZY_EXPORTS = {
    # feature store (store.py)
    "FeatureStore": "pvrw.feature_cache.store",
    "FeatureSet": "pvrw.feature_cache.store",
    "FeatureSpec": "pvrw.feature_cache.store",
    # errors (_h5.py)
    "FeatureCacheError": "pvrw.feature_cache._h5",
    "FeatureSetMismatchError": "pvrw.feature_cache._h5",
    "FileBusyError": "pvrw.feature_cache._h5",
    "DiskFullError": "pvrw._diskspace",
    # content-addressed cache (content_cache.py)
    "CachedBackbone": "pvrw.feature_cache.content_cache",
    "hash_frames": "pvrw.feature_cache.content_cache",
    # episode datasets (recording.py)
    "EpisodeDataset": "pvrw.feature_cache.recording",
    "EpisodeWriter": "pvrw.feature_cache.recording",
    "record_episodes": "pvrw.feature_cache.recording",
    "make_policy": "pvrw.feature_cache.recording",
    # offline extraction (extraction.py)
    "extract_features": "pvrw.feature_cache.extraction",
}

__all__ = sorted(_LAZY_EXPORTS)

__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
