"""DrM heads on ViT patch maps (PatchPolicy, AttentionPoolPolicy): shapes, counts, critic-trained end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from backbone_helpers import registered_backbones
from drm_sb3_envs import StackedImageEnv, fast
from pvrw.drm import DrM, trainable_parameter_counts
from pvrw.drm.pvr_heads import AttentionPoolExtractor, PatchConvExtractor, compression_channels
from pvrw.pvr_wrappers import VecPVRObservation

pytestmark = pytest.mark.filterwarnings("ignore::pvrw.backbones.registry.RandomWeightsWarning")


@pytest.fixture(scope="module", autouse=True)
def tiny_dinov2():
    from pvrw.backbones.dinov2 import dinov2

    with registered_backbones({"h_dinov2": dinov2(depth=1)}):
        yield


def test_heads_shapes_and_counts():
    space = spaces.Box(-np.inf, np.inf, (3, 768, 16, 16), np.float32)  # DINOv2 patches at 224, 3 frames
    conv = PatchConvExtractor(space)
    assert compression_channels(16, 16) == 8 and conv.compression[0].out_channels == 8  # eai-vc: 2048 / 256
    assert isinstance(conv.compression[1], th.nn.GroupNorm) and conv.input_dim == 4 * 8 * 16 * 16
    x = th.randn(2, *space.shape)
    assert conv(x).shape == (2, 1024)
    attn = AttentionPoolExtractor(space)
    assert attn(x).shape == (2, 3 * 128) and attn.features_dim == 384
    # Table-1-style counts: the encoder column is the head; the frozen ViT is not counted
    counts = trainable_parameter_counts(space, policy="PatchPolicy")
    assert counts["encoder"] == sum(p.numel() for p in conv.parameters()) == 8_446_992
    assert trainable_parameter_counts(space, policy="AttentionPoolPolicy")["encoder"] == 165_376
    # the PIE-G head alone on the same map would need 200x the parameters
    assert trainable_parameter_counts(space, policy="PiegPolicy")["encoder"] > 20 * counts["encoder"]
    with pytest.raises(ValueError, match="tokens='patches'"):
        PatchConvExtractor(spaces.Box(-1, 1, (3, 768), np.float32))


@pytest.mark.parametrize("policy", ["PatchPolicy", "AttentionPoolPolicy"])
def test_patch_heads_train_end_to_end(policy):
    venv = VecPVRObservation(DummyVecEnv([lambda: StackedImageEnv(side=28)]), "h_dinov2", weights="random",
                             tokens="patches")
    assert venv.observation_space.shape == (3, 768, 2, 2)
    head = dict(compression_dim=64, pieg_dim=32) if policy == "PatchPolicy" else dict(attn_dim=16, n_heads=2)
    model = DrM(policy, venv, seed=0, **fast(features_extractor_kwargs=head))
    encoder = model.policy.features_extractor
    before = [p.detach().clone() for p in encoder.parameters()]
    actor_before = [p.detach().clone() for p in model.policy.actor.parameters()]
    model.learn(24)
    assert model.policy.encoder_optimizer is not None
    assert all(not th.equal(a, b) for a, b in zip(before, encoder.parameters()) if a.numel() > 1)  # critic-trained
    assert any(not th.equal(a, b) for a, b in zip(actor_before, model.policy.actor.parameters()))
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (1, 2)
