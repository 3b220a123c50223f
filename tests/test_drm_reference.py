"""pvrw's DrM update and perturbation against the original code (XuGW-Kevin/DrM ``agents/drm.py`` + ``utils.py``).

pvrw commits no reference code: set ``PVRW_DRM_REFERENCE`` to a directory holding the original ``drm.py`` (or
``agents/drm.py``) and ``utils.py`` (``git clone https://github.com/XuGW-Kevin/DrM``); without it these tests skip.
The reference-free checks of the same properties are in ``test_drm_mechanisms.py``.
"""

import copy
import importlib.util
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from pvrw.drm import DrM
from pvrw.drm.dormant import perturb

TINY = dict(hidden_dim=32, feature_dim=6)
BATCH, ACTIONS, STEP = 16, 3, 2001


def _helpers():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_drm_reference.py"
    spec = importlib.util.spec_from_file_location("_drm_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ref():
    directory = os.environ.get("PVRW_DRM_REFERENCE")
    if not directory:
        pytest.skip("PVRW_DRM_REFERENCE (a directory with the original DrM's drm.py and utils.py) is not set")
    helpers = _helpers()
    return helpers, helpers.load_reference(directory)


class SpaceEnv(gym.Env):
    """Only spaces: the update is driven by hand-made batches."""

    def __init__(self, observation_space):
        self.observation_space = observation_space
        self.action_space = gym.spaces.Box(-1, 1, (ACTIONS,), np.float32)

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def _pair(ref, pixels: bool):
    helpers, module = ref
    if pixels:
        space, policy = gym.spaces.Box(0, 255, (9, 20, 20), np.uint8), "CnnPolicy"
    else:
        space, policy = gym.spaces.Box(-5, 5, (3, 8), np.float32), "MlpPolicy"
    model = DrM(policy, SpaceEnv(space), policy_kwargs=TINY, learning_starts=2000, seed=0, device="cpu")
    agent = helpers.make_agent(module, space.shape, ACTIONS, "cpu", **TINY)
    helpers.copy_weights(model, agent)
    return helpers, model, agent, space


def _batch(space, pixels: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    if pixels:
        obs, next_obs = (rng.integers(0, 256, (BATCH, *space.shape), dtype=np.uint8) for _ in range(2))
    else:
        obs, next_obs = (rng.standard_normal((BATCH, *space.shape)).astype(np.float32) for _ in range(2))
    actions = rng.uniform(-1, 1, (BATCH, ACTIONS)).astype(np.float32)
    rewards = rng.standard_normal((BATCH, 1)).astype(np.float32)
    discounts = np.full((BATCH, 1), 0.99**3, np.float32)
    samples = ReplayBufferSamples(
        *(th.as_tensor(x) for x in (obs, actions, next_obs, np.zeros_like(rewards), rewards, discounts))
    )
    return (obs, actions, rewards, discounts, next_obs), samples


@pytest.mark.parametrize("pixels", [True, False], ids=["pixels", "features"])
def test_update_matches_the_reference(ref, pixels):
    """Same weights, batch and random state: the same losses, targets, dormant ratio, parameters and random stream
    after two updates (the second one from the Adam state of the first)."""
    helpers, model, agent, space = _pair(ref, pixels)
    for update in range(2):
        batch, samples = _batch(space, pixels, seed=update)
        th.manual_seed(update)
        expected = agent.update(iter([batch]), STEP + update)
        ref_rng = th.get_rng_state()
        th.manual_seed(update)
        got = model._update(samples, STEP + update)
        assert th.equal(th.get_rng_state(), ref_rng)
        assert got["actor_dormant_ratio"] == expected["actor_dormant_ratio"]
        assert got["value_loss"] == pytest.approx(expected["predictor_loss"], rel=1e-5, abs=1e-6)
        for key in ("critic_loss", "critic_q1", "critic_q2", "critic_target_q", "actor_loss", "batch_reward"):
            assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
        ours = dict(
            actor=model.actor, critic=model.critic, critic_target=model.critic_target, value_net=model.value_net
        )
        if pixels:
            ours["encoder"] = model.policy.features_extractor.convnet
        for name, network in helpers.reference_networks(agent).items():
            for (key, theirs), mine in zip(network.state_dict().items(), ours[name].state_dict().values()):
                assert th.allclose(mine, theirs, rtol=1e-5, atol=1e-6), f"{name}.{key}"


def test_perturb_matches_the_reference(ref):
    """Every network of a pixel agent, perturbed in the reference order from the same seed: the same parameters and
    the same random stream afterwards (the reference re-initialises a copy of each whole network, convolutions too)."""
    helpers, model, agent, _ = _pair(ref, pixels=True)
    utils = ref[1].utils
    ours = [model.actor, model.critic, model.critic_target, model.policy.features_extractor.convnet, model.value_net]
    theirs = [agent.actor, agent.critic, agent.critic_target, agent.encoder, agent.value_predictor]
    th.manual_seed(3)
    for network in theirs:
        utils.perturb(network, th.optim.Adam(network.parameters()), 0.7)
    ref_rng = th.get_rng_state()
    th.manual_seed(3)
    for network in ours:
        perturb(network, None, 0.7)
    assert th.equal(th.get_rng_state(), ref_rng)
    for mine, network in zip(ours, theirs):
        their_params = [p for p in copy.deepcopy(network).parameters()]
        if network is agent.encoder:
            their_params = list(agent.encoder.convnet.parameters())
        for a, b in zip(mine.parameters(), their_params):
            assert th.allclose(a, b, rtol=1e-6, atol=1e-7)
