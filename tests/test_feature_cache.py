"""Feature store and content-addressed cache: round trips, refusal of mismatches, crash safety, SWMR, bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from pvrw.feature_cache import (
    CachedBackbone,
    FeatureCacheError,
    FeatureSetMismatchError,
    FeatureSpec,
    FeatureStore,
    hash_frames,
)


class TinyNet(nn.Module):
    """A tiny conv net: (N,3,16,16) -> (N,16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


@pytest.fixture(autouse=True)
def _forget_tiny_backbones():
    """Unregister this module's tiny test backbones afterwards (tests elsewhere list the registry)."""
    from backbone_helpers import forget_backbones

    from pvrw.backbones import registry

    yield
    forget_backbones(n for n in registry._REGISTRY if n.startswith("fc_tiny"))


def tiny_backbone(seed: int = 0, name: str = "fc_tiny", resolution: int = 16):
    """A real FrozenBackbone from the registry around a seeded TinyNet; counts frames through ``.frames_seen``."""
    from pvrw.backbones.registry import create_backbone, register_backbone

    torch.manual_seed(seed)
    register_backbone(name, module=TinyNet(), output_shape=(16,), overwrite=True)
    backbone = create_backbone(name, resolution=resolution)
    backbone.frames_seen = 0

    def count(_module, inputs, _output):
        backbone.frames_seen += len(inputs[0])

    backbone.model.register_forward_hook(count)
    return backbone


def random_frames(n: int, seed: int = 0, side: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, side, side), dtype=np.uint8)


def spec(**overrides) -> FeatureSpec:
    fields = dict(backbone="toy", fingerprint="sha256:abc", resolution=112, preprocessing="x/255", output_shape=(6, 5))
    fields.update(overrides)
    return FeatureSpec(**fields)


# ---------------------------------------------------------------------------------------------------------- store


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_per_dtype(tmp_path, dtype):
    path = tmp_path / "f.h5"
    x = (np.random.default_rng(0).standard_normal((257, 6, 5)) * 100).astype(np.float32)
    with FeatureStore(path, "a") as store:
        fs = store.require_set(spec(dtype=dtype))
        for start in range(0, len(x), 50):  # several appends, the last partial
            fs.append(x[start : start + 50])
    expected = torch.from_numpy(x).to(getattr(torch, dtype)).float().numpy()  # torch's own rounding, independently
    with FeatureStore(path) as store:
        fs = store.get_set("toy")
        assert fs.spec == spec(dtype=dtype)
        assert len(fs) == len(x)
        np.testing.assert_array_equal(fs.read_range(0, len(x)), expected)
        idx = np.random.default_rng(1).integers(0, len(x), 300)
        np.testing.assert_array_equal(fs.read(idx), expected[idx])
        got_idx, batch = fs.sample(64, np.random.default_rng(2))
        np.testing.assert_array_equal(batch, expected[got_idx])
    if dtype == "float32":
        np.testing.assert_array_equal(expected, x)
    else:
        assert not np.array_equal(expected, x)  # the rounding really happened


def test_compression_choice(tmp_path):
    with FeatureStore(tmp_path / "f.h5", "a") as store:
        small = store.require_set(spec(backbone="small", output_shape=(768,)))  # auto: lzf up to 16 KiB rows
        large = store.require_set(spec(backbone="large", output_shape=(128, 14, 14)))  # auto: none
        gzip = store.require_set(spec(backbone="gzip", output_shape=(128, 14, 14)), compression="gzip")
        assert small._group["features"].compression == "lzf" and large._group["features"].compression is None
        assert gzip._group["features"].compression == "gzip"
        with pytest.raises(ValueError, match="compression 'zstd' is not supported"):
            store.require_set(spec(backbone="other"), compression="zstd")


@pytest.mark.parametrize("cache_bytes", [0, 4096, 256 << 20])
def test_random_reads_match_numpy_for_any_chunk_cache(tmp_path, cache_bytes):
    """Uncached, evicting and all-in-cache reads give the same rows, with repeats and the partly filled last chunk."""
    x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)
    with FeatureStore(tmp_path / "f.h5", "a") as store:
        fs = store.require_set(spec(output_shape=(8,)))
        fs.append(x[:999])
        fs.append(x[999:])
    with FeatureStore(tmp_path / "f.h5", cache_bytes=cache_bytes) as store:
        fs = store.get_set("toy")
        rng = np.random.default_rng(3)
        for _ in range(20):
            idx = rng.integers(0, 1000, 256)
            idx[:3] = [999, 999, 0]
            np.testing.assert_array_equal(fs.read(idx), x[idx])
        with pytest.raises(IndexError):
            fs.read([1000])


def test_several_sets_in_one_file_and_mismatch_refused(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureStore(path, "a") as store:
        store.require_set(spec()).append(np.ones((3, 6, 5), np.float32))
        store.require_set(spec(backbone="other", output_shape=(4,))).append(np.zeros((2, 4), np.float32))
        assert store.set_names() == ["other", "toy"]
    for field, value in [
        ("fingerprint", "random"),
        ("resolution", 224),
        ("preprocessing", "imagenet"),
        ("dtype", "float16"),
    ]:
        with FeatureStore(path, "a") as store, pytest.raises(FeatureSetMismatchError) as err:
            store.require_set(spec(**{field: value}))
        message = str(err.value)
        assert field in message and repr(getattr(spec(), field)) in message and repr(value) in message
    with FeatureStore(path) as store:  # nothing was changed by the refused attempts
        assert len(store.get_set("toy")) == 3 and len(store.get_set("other")) == 2


@pytest.mark.parametrize("content", ["junk", "truncated", "foreign", "episodes", "missing", "directory"])
def test_bad_files_give_clear_errors(tmp_path, content):
    path = tmp_path / "bad.h5"
    if content == "junk":
        path.write_bytes(b"not an hdf5 file" * 100)
    elif content == "truncated":
        with FeatureStore(path, "a") as store:
            store.require_set(spec()).append(np.ones((500, 6, 5), np.float32))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif content == "foreign":
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
    elif content == "episodes":
        with h5py.File(path, "w") as f:
            f.attrs["pvrw_format"] = "pvrw.episodes"
    elif content == "directory":
        path.mkdir()
    for mode in ("r",) if content == "missing" else ("r", "a"):  # "a" creates a missing file
        with pytest.raises(FeatureCacheError) as err:
            with FeatureStore(path, mode) as store:
                store.get_set("toy").read_range(0, 500)
        assert str(path) in str(err.value)
        if content == "directory":
            assert f"is a directory; pass the path of a file in it, e.g. {path / 'features.h5'}" in str(err.value)
        elif content != "missing":
            assert "pvrw.features" in str(err.value)
    if content == "foreign":  # opening for writing must not have touched the foreign file
        with h5py.File(path, "r") as f:
            assert list(f) == ["x"] and "pvrw_format" not in f.attrs


# ------------------------------------------------------------------------------------------ crash safety, SWMR

WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from pvrw.feature_cache.store import FeatureSpec, FeatureStore
    path, mode = sys.argv[1], sys.argv[2]
    spec = FeatureSpec("toy", "sha256:abc", 112, "x/255", (64,))
    store = FeatureStore(path, "a")
    fs = store.require_set(spec)
    n = len(fs)
    while True:
        if mode == "step" and sys.stdin.readline().strip() != "go":
            break
        rows = np.arange(n, n + 37, dtype=np.float32)[:, None] + np.arange(64, dtype=np.float32) / 64
        n = fs.append(rows)
        print(n, flush=True)
    store.close()
    """
)


def expected_rows(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32)[:, None] + np.arange(64, dtype=np.float32) / 64


def start_writer(tmp_path, mode: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "f.h5"), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_sigkill_mid_append_keeps_every_flushed_row(tmp_path):
    writer = start_writer(tmp_path, "free")
    last = 0
    for line in writer.stdout:  # the writer appends as fast as it can; kill it at an arbitrary moment of an append
        last = int(line)
        if last >= 37 * 40:
            break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    with FeatureStore(tmp_path / "f.h5") as store:
        fs = store.get_set("toy")
        n = len(fs)
        assert n >= last and n % 37 == 0  # every printed (flushed) batch, and never half a batch
        np.testing.assert_array_equal(fs.read_range(0, n), expected_rows(n))
    # a new writer recovers the file (the dead writer left it flagged open) and continues without a gap
    writer = start_writer(tmp_path, "step")
    writer.stdin.write("go\n")
    writer.stdin.flush()
    assert int(writer.stdout.readline()) == n + 37
    writer.stdin.close()
    assert writer.wait(timeout=60) == 0
    with FeatureStore(tmp_path / "f.h5") as store:
        np.testing.assert_array_equal(store.get_set("toy").read_range(0, n + 37), expected_rows(n + 37))


def test_swmr_reader_follows_a_live_writer(tmp_path):
    writer = start_writer(tmp_path, "step")
    try:
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert int(writer.stdout.readline()) == 37
        with FeatureStore(tmp_path / "f.h5") as store:  # opened while the writer holds the file
            fs = store.get_set("toy")
            assert len(fs) == 37
            for expected in (74, 111):
                writer.stdin.write("go\n")
                writer.stdin.flush()
                assert int(writer.stdout.readline()) == expected
                assert len(fs) == expected - 37  # unchanged until refreshed
                assert fs.refresh() == expected
                np.testing.assert_array_equal(fs.read(np.arange(expected)[::-1]), expected_rows(expected)[::-1])
        with pytest.raises(FeatureCacheError, match="another live process"):
            FeatureStore(tmp_path / "f.h5", "a")  # a second writer is refused while the first lives
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)


# ------------------------------------------------------------------------------------------ content cache


def test_cache_hits_skip_the_backbone(tmp_path):
    backbone = tiny_backbone()
    frames = random_frames(12)
    direct = backbone.embed(frames)
    backbone.frames_seen = 0
    path = tmp_path / "cache.h5"
    with CachedBackbone(backbone, path, flush_every=5) as cached:
        assert (cached.name, cached.output_shape, cached.fingerprint) == (backbone.name, (16,), backbone.fingerprint)
        np.testing.assert_array_equal(cached.embed(frames[:8]), direct[:8])
        assert backbone.frames_seen == 8 and (cached.stats.hits, cached.stats.misses) == (0, 8)
        batch = np.concatenate([frames[4:12], frames[11:12]])  # 4 known, 4 new, one new frame twice
        np.testing.assert_array_equal(cached.embed(batch), direct[[*range(4, 12), 11]])
        assert backbone.frames_seen == 12 and (cached.stats.hits, cached.stats.misses) == (4, 13)
        np.testing.assert_array_equal(cached.embed(frames.transpose(0, 2, 3, 1)), direct)  # HWC: same content
        assert backbone.frames_seen == 12 and cached.cache_info()["hits"] == 16
    with CachedBackbone(backbone, path) as cached:  # a new process would see the same: everything is on disk
        np.testing.assert_array_equal(cached.embed(frames[::-1]), direct[::-1])
        assert backbone.frames_seen == 12 and cached.stats.misses == 0 and cached.stats.hit_rate == 1.0
    with FeatureStore(path) as store:
        fs = store.get_set(backbone.name)
        assert len(fs) == 12  # each frame stored once
        assert {h.tobytes() for h in fs.hashes()} == {h.tobytes() for h in hash_frames(frames)}


def test_read_only_cache_on_a_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5 does not exist and write=False.*pass write=True"):
        CachedBackbone(StandIn(), tmp_path / "missing.h5", write=False)


def test_cache_refuses_other_weights_and_rounds_consistently(tmp_path):
    path = tmp_path / "cache.h5"
    with CachedBackbone(tiny_backbone(seed=0), path, dtype="float16") as cached:
        miss = cached.embed(random_frames(4))
        hit = cached.embed(random_frames(4))
        np.testing.assert_array_equal(miss, hit)  # a miss returns what a later hit will read
    other = tiny_backbone(seed=1)
    with pytest.raises(FeatureSetMismatchError, match="fingerprint: file has 'module-sha256"):
        CachedBackbone(other, path, dtype="float16")
    with pytest.raises(FeatureSetMismatchError, match=r"resolution: file has 16, requested 32.*set_name=\.\.\."):
        CachedBackbone(tiny_backbone(seed=0, resolution=32), path, dtype="float16")
    with FeatureStore(path) as store:  # the refused caches released the file
        assert len(store.get_set("fc_tiny")) == 4


CACHE_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from pvrw.feature_cache import CachedBackbone
    class StandIn:
        name, fingerprint, resolution, preprocessing, output_shape = "standin", "random", 16, "x/255", (4,)
        def embed(self, frames, batch_size=64):
            return frames.reshape(len(frames), -1)[:, :4].astype(np.float32) / 255
    frames = np.random.default_rng(0).integers(0, 256, (8, 3, 16, 16), dtype=np.uint8)
    cached = CachedBackbone(StandIn(), sys.argv[1])
    cached.embed(frames)
    cached.flush()
    print("ready", flush=True)
    sys.stdin.readline()
    cached.close()
    """
)


class StandIn:
    """A NumPy-only object with the FrozenBackbone interface (the same as in CACHE_WRITER)."""

    name, fingerprint, resolution, preprocessing, output_shape = "standin", "random", 16, "x/255", (4,)

    def __init__(self):
        self.calls = 0

    def embed(self, frames, batch_size=64):
        self.calls += len(frames)
        return frames.reshape(len(frames), -1)[:, :4].astype(np.float32) / 255


def test_cache_written_by_another_process_is_used_read_only(tmp_path, caplog):
    script = tmp_path / "cache_writer.py"
    script.write_text(CACHE_WRITER)
    path = tmp_path / "cache.h5"
    writer = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        backbone = StandIn()
        with CachedBackbone(backbone, path) as cached:
            assert not cached.writable and "read-only" in caplog.text
            frames = random_frames(10)
            np.testing.assert_array_equal(cached.embed(frames), StandIn().embed(frames))
            assert backbone.calls == 2 and (cached.stats.hits, cached.stats.misses) == (8, 2)
    finally:
        writer.stdin.write("done\n")
        writer.stdin.close()
        assert writer.wait(timeout=60) == 0
    with FeatureStore(path) as store:
        assert len(store.get_set("standin")) == 8  # the read-only user wrote nothing


def test_two_backbones_share_one_cache_file(tmp_path):
    path = tmp_path / "cache.h5"
    a, b = tiny_backbone(seed=0, name="fc_tiny_a"), tiny_backbone(seed=1, name="fc_tiny_b")
    frames = random_frames(6)
    ca, cb = CachedBackbone(a, path, flush_every=2), CachedBackbone(b, path, flush_every=2)
    ea, eb = ca.embed(frames), cb.embed(frames)  # b's set is created while a's writer is in SWMR mode
    ea2 = ca.embed(frames)
    ca.close()
    cb.close()
    np.testing.assert_array_equal(ea, ea2)
    assert not np.allclose(ea, eb)
    with FeatureStore(path) as store:
        assert store.set_names() == ["fc_tiny_a", "fc_tiny_b"]
        np.testing.assert_array_equal(store.get_set("fc_tiny_b").read_range(0, 6), eb)
