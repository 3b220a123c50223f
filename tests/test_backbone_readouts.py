"""ViT readouts (tokens= / layers=) of every registry ViT, on random 2-block twins of the built-ins and timm's tiny
``test_vit`` registered as a custom entry; values checked against timm's own ``forward_features`` /
``forward_intermediates``."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest
import torch

from pvrw.backbones.readouts import TOKENS, parse_layers
from pvrw.backbones.registry import _CFG_CACHE, _REGISTRY
from pvrw.pvr_wrappers import (
    PVRObservation,
    VecPVRObservation,
    VectorPVRObservation,
    create_backbone,
    get_backbone_cfg,
    register_backbone,
)

pytestmark = pytest.mark.filterwarnings("ignore::pvrw.backbones.registry.RandomWeightsWarning")

# registry name -> (side with a 2x2 or 4x4 patch grid, has registers)
VITS = {"r_dinov2": (28, False), "r_dinov2_reg": (28, True), "r_vc1": (32, False), "r_timm": (32, False)}


@pytest.fixture(scope="module", autouse=True)
def tiny_vits():
    from pvrw.backbones.dinov2 import dinov2, dinov2_reg
    from pvrw.backbones.vc1 import vc1

    for name, entry in {"r_dinov2": dinov2, "r_dinov2_reg": dinov2_reg, "r_vc1": vc1}.items():
        register_backbone(name, cfg=entry(depth=2), overwrite=True)
    register_backbone("r_timm", timm_model="test_vit", overwrite=True)  # a user's timm ViT
    yield
    for name in VITS:
        _REGISTRY.pop(name, None)
        _CFG_CACHE.pop(name, None)


def frames(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, side, side), dtype=np.uint8)


def reference(bb, x: np.ndarray, tokens: str, layers=None) -> np.ndarray:
    """The readout computed from timm's own methods on the backbone's ViT."""
    vit = bb.model.weights_module
    prefix = vit.num_prefix_tokens
    with torch.no_grad():
        inp = bb.preprocess(torch.from_numpy(x))
        if layers is None:
            outs = [vit.forward_features(inp)]
        else:
            depth = len(vit.blocks)
            idx = [depth + i if i < 0 else i for i in layers]
            got = vit.forward_intermediates(inp, indices=idx, norm=True, output_fmt="NLC", return_prefix_tokens=True,
                                            intermediates_only=True)  # in block order, whatever order was asked
            by_block = {i: torch.cat([p, s], 1) for i, (s, p) in zip(sorted(idx), got)}
            outs = [by_block[i] for i in idx]
    parts = []
    for t in outs:
        cls, patches = t[:, 0], t[:, prefix:]
        g = int(patches.shape[1] ** 0.5)
        parts.append({"cls": cls, "cls+registers": t[:, :prefix].flatten(1), "mean": patches.mean(1),
                      "cls+mean": torch.cat([cls, patches.mean(1)], 1),
                      "patches": patches.transpose(1, 2).reshape(len(t), -1, g, g)}[tokens])
    return torch.cat(parts, 1).numpy()


@pytest.mark.parametrize("name", VITS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_every_readout_of_every_vit(name, tokens):
    side, registers = VITS[name]
    cfg = get_backbone_cfg(name)
    if tokens == "cls+registers" and not registers:
        with pytest.raises(ValueError, match="not one of"):
            cfg.resolve_options(tokens=tokens)
        return
    for layers in (None, (-1, -2)):
        options = cfg.resolve_options(tokens=tokens, layers=layers)
        shape = cfg.output_shape(side, **options)  # known before any weights exist
        bb = create_backbone(name, weights="random", resolution=side, tokens=tokens, layers=layers)
        assert bb.output_shape == shape
        x = frames(3, side)
        out = bb.embed(x)
        assert out.shape == (3, *shape)
        np.testing.assert_allclose(out, reference(bb, x, tokens, layers), rtol=1e-4, atol=1e-5)
        assert f"tokens={tokens}" in bb.preprocessing and (layers is None or "layers=(-1, -2)" in bb.preprocessing)


def test_shapes_of_the_study_backbones():
    """Reported shapes at 224 of the ViT-B entries (no model built)."""
    def shape(name, **kw):
        cfg = get_backbone_cfg(name)
        return cfg.output_shape(224, **cfg.resolve_options(**kw))

    assert shape("dinov2") == (768,) and shape("dinov2_reg") == (3840,)  # the study's defaults stay
    assert shape("dinov2", tokens="mean") == (768,)
    assert shape("dinov2", tokens="cls+mean") == (1536,)
    assert shape("dinov2", tokens="patches") == (768, 16, 16)
    assert shape("vc1", tokens="patches") == (768, 14, 14)
    assert shape("dinov2", layers="-1,-2,-3,-4") == (3072,)
    assert shape("dinov2_reg", layers=(-1, -2)) == (7680,)
    assert shape("dinov2", tokens="patches", layers=(-1, -4)) == (1536, 16, 16)


def test_layers_are_canonical_and_bad_ones_refused():
    assert parse_layers("-1,-2,-3,-4", 12) == (-1, -2, -3, -4)
    assert parse_layers((11, 10), 12) == (-1, -2)
    assert parse_layers(11, 12) is None and parse_layers((-1,), 12) is None and parse_layers("last", 12) is None
    cfg = get_backbone_cfg("r_dinov2")
    with pytest.raises(ValueError, match=r"r_dinov2: layers=\(-3,\): this ViT has 2 blocks; use indices from -2 to 1"):
        cfg.resolve_options(layers=(-3,))
    with pytest.raises(ValueError, match="names a block twice"):
        cfg.resolve_options(layers="1,-1")
    with pytest.raises(ValueError, match="comma-separated block indices"):
        cfg.resolve_options(layers="last2")
    with pytest.raises(ValueError, match="not one of"):
        create_backbone("r_dinov2", weights="random", resolution=28, tokens="cls+registers")
    timm_cfg = get_backbone_cfg("r_timm")
    with pytest.raises(ValueError, match="layers= reads tokens of several blocks"):
        timm_cfg.output_shape(32, **timm_cfg.resolve_options(layers=(-1, -2)))  # its default tokens="pooled"


def test_last_layer_is_the_default_and_keeps_old_cache_keys():
    x = frames(2, 28)
    default = create_backbone("r_dinov2", weights="random", resolution=28)
    last = create_backbone("r_dinov2", weights="random", resolution=28, layers=(1,))
    assert last.options == default.options and last.preprocessing == default.preprocessing
    np.testing.assert_array_equal(last.embed(x), default.embed(x))
    assert "layers" not in default.preprocessing  # caches written before layers= existed still match
    assert default.feature_set_name == "r_dinov2"
    mean = create_backbone("r_dinov2", weights="random", resolution=28, tokens="mean", layers=(-1, -2))
    assert mean.feature_set_name == "r_dinov2[layers=(-1, -2),tokens=mean]"


def test_feature_cache_keeps_readouts_apart(tmp_path):
    from pvrw.feature_cache import CachedBackbone

    x = frames(4, 28)
    path = tmp_path / "cache.h5"
    results = {}
    for tokens in ("cls", "mean", "patches"):
        bb = create_backbone("r_dinov2", weights="random", resolution=28, tokens=tokens)
        with CachedBackbone(bb, path) as cached:
            results[tokens] = cached.embed(x)
            np.testing.assert_array_equal(results[tokens], bb.embed(x))
        with CachedBackbone(bb, path) as cached:  # read back: every frame a hit, same values
            np.testing.assert_array_equal(cached.embed(x), results[tokens])
            assert cached.stats.hits == 4 and cached.stats.misses == 0
    assert results["patches"].shape == (4, 768, 2, 2)
    assert not np.allclose(results["cls"], results["mean"])


class StackEnv(gym.Env):
    """Three stacked random 28-px frames, one new frame per step."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(0, 255, (9, 28, 28), np.uint8)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.stack = [self.np_random.integers(0, 256, (3, 28, 28), dtype=np.uint8) for _ in range(3)]
        return np.concatenate(self.stack), {}

    def step(self, action):
        self.stack = self.stack[1:] + [self.np_random.integers(0, 256, (3, 28, 28), dtype=np.uint8)]
        return np.concatenate(self.stack), 0.0, False, False, {}


@pytest.mark.parametrize("tokens, layers", [("patches", None), ("cls+mean", "-1,-2")])
def test_readouts_in_the_three_wrappers_embed_each_frame_once(tokens, layers):
    from stable_baselines3.common.vec_env import DummyVecEnv

    bb = create_backbone("r_dinov2_reg", weights="random", resolution=28, tokens=tokens, layers=layers)
    seen = []
    embed = bb.embed
    bb.embed = lambda f, batch_size=64: seen.append(len(f)) or embed(f, batch_size)  # counts frames embedded
    single = PVRObservation(StackEnv(), "r_dinov2_reg", weights="random", tokens=tokens, layers=layers)
    assert single.observation_space.shape == (3, *bb.output_shape)
    obs, _ = single.reset(seed=1)
    ref = embed(single.layout.frames(single.env.reset(seed=1)[0]))
    np.testing.assert_allclose(obs, ref, rtol=1e-5, atol=1e-5)
    vec = VecPVRObservation(DummyVecEnv([StackEnv, StackEnv]), bb)
    vec.reset()
    assert sum(seen) == 6
    vec.step(np.zeros((2, 1), np.float32))
    assert sum(seen) == 8  # one new frame per env per step
    vector = VectorPVRObservation(gym.vector.SyncVectorEnv([StackEnv]), bb)
    out, _ = vector.reset(seed=0)
    assert out.shape == (1, 3, *bb.output_shape) and vector.single_observation_space.shape == (3, *bb.output_shape)
