"""Trainable parameter counts against an independent construction of the reference-shaped modules."""

import pytest
import torch as th
from torch import nn

from pvrw.drm import DrM, trainable_parameter_counts



def _count(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def _reference_modules(repr_dim, action_dim, variant, feature_dim=50, hidden=1024):
    """The reference's Actor / Critic / VNetwork written out as plain nn.Sequential (agents/drm*.py)."""

    def trunk():
        return nn.Sequential(nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def mlp(in_dim, out_dim):
        return nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
        )

    def q_head():
        if variant == "drm":
            return mlp(feature_dim + action_dim, 1)
        return nn.Sequential(
            nn.Linear(feature_dim + action_dim, hidden), nn.Dropout(0.01), nn.LayerNorm(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.Dropout(0.01), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, 1),
        )  # fmt: skip

    actor = nn.Sequential(trunk(), mlp(feature_dim, action_dim))
    critic = nn.Sequential(trunk(), q_head(), q_head())
    value = nn.Sequential(trunk(), mlp(feature_dim, 1))
    return dict(actor=_count(actor), critic=_count(critic), value_net=_count(value))


def _reference_pixels(resolution, frame_stack, action_dim, variant):
    with th.device("meta"):
        convs = nn.Sequential(
            nn.Conv2d(3 * frame_stack, 32, 3, stride=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(),
        )  # fmt: skip
        repr_dim = nn.Flatten()(convs(th.empty(1, 3 * frame_stack, resolution, resolution))).shape[1]
        counts = dict(encoder=_count(convs), **_reference_modules(repr_dim, action_dim, variant))
    return counts, repr_dim


def _total(counts):
    return sum(v for k, v in counts.items() if k != "total")


@pytest.mark.parametrize("variant", ["drm", "drm_mw"])
@pytest.mark.parametrize("resolution", [84, 112, 224])
def test_pixel_counts_match_reference_construction(variant, resolution):
    expected, repr_dim = _reference_pixels(resolution, 3, 4, variant)
    assert repr_dim == {84: 39_200, 112: 76_832, 224: 352_800}[resolution]
    counts = trainable_parameter_counts((9, resolution, resolution), action_dim=4, policy="CnnPolicy", variant=variant)
    assert {k: counts[k] for k in expected} == expected
    assert counts["total"] == _total(expected)
    if resolution == 84:  # the reference notes' totals, computed there by building the official classes
        assert counts["total"] == {"drm": 10_333_481, "drm_mw": 10_341_673}[variant]


@pytest.mark.parametrize("shape", [(3, 768), (3, 3840), (768,)])
def test_feature_counts_match_reference_construction(shape):
    flat = 1
    for s in shape:
        flat *= s
    with th.device("meta"):
        expected = dict(encoder=0, **_reference_modules(flat, 4, "drm"))
    counts = trainable_parameter_counts(shape, action_dim=4, policy="MlpPolicy")
    assert {k: counts[k] for k in expected} == expected


def test_pieg_counts_match_reference_construction():
    k, channels, side = 3, 128, 14  # ResNet18 layer2 at 112 px
    with th.device("meta"):
        head = nn.Sequential(nn.Linear(2 * (k - 1) * channels * side * side, 1024), nn.LayerNorm(1024))
        expected = dict(encoder=_count(head), **_reference_modules(1024, 4, "drm_mw"))
    counts = trainable_parameter_counts((k, channels, side, side), action_dim=4, policy="PiegPolicy", variant="drm_mw")
    assert {k: counts[k] for k in expected} == expected
    assert counts["encoder"] == 100_352 * 1024 + 1024 + 2 * 1024


def test_counts_of_a_built_model_exclude_the_target_critic():
    from stable_baselines3.common.envs import FakeImageEnv

    env = FakeImageEnv(screen_height=24, screen_width=24, n_channels=3, discrete=False)
    model = DrM("CnnPolicy", env, policy_kwargs=dict(hidden_dim=32, feature_dim=8), buffer_size=10)
    counts = trainable_parameter_counts(model)
    spec = trainable_parameter_counts((3, 24, 24), action_dim=model.action_space.shape[0], hidden_dim=32, feature_dim=8)
    assert counts == spec
    everything = sum(p.numel() for p in model.policy.parameters())
    assert everything == counts["total"] + _count(model.critic_target)
