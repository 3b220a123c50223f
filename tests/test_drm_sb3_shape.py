"""SB3's own off-policy tests (test_run, test_save_load, test_predict, test_callbacks, test_deterministic,
test_train_eval_mode, n-step replay, multi-env), run with DrM on its new policy options and Dict observations."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from drm_sb3_envs import FAST, DictObsEnv, StackedImageEnv, fast
from gymnasium import spaces
from stable_baselines3.common.callbacks import (
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    EveryNTimesteps,
    StopTrainingOnMaxEpisodes,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from stable_baselines3.common.vec_env import DummyVecEnv, VecTransposeImage
from torch import nn

from pvrw.drm import DrM

# (policy, env factory, extra policy_kwargs): SB3 habits, one per case
CASES = {
    "mlp-net-arch": (
        "MlpPolicy",
        lambda: gym.make("Pendulum-v1"),
        dict(net_arch=[16], activation_fn=nn.Tanh, n_critics=3),
    ),
    "cnn-nature-own-actor-encoder": (
        "CnnPolicy",
        lambda: StackedImageEnv(side=36),
        dict(
            features_extractor_class=NatureCNN,
            features_extractor_kwargs=dict(features_dim=16),
            share_features_extractor=False,
        ),
    ),
    "cnn-float-images": ("CnnPolicy", lambda: StackedImageEnv(dtype=np.float32), dict(normalize_images=False)),
    "dict-pixels": ("MultiInputPolicy", lambda: DictObsEnv("pixels"), {}),
    "dict-features": ("MultiInputPolicy", lambda: DictObsEnv("features"), {}),
}


def make(case, n_envs=1, seed=0, **kwargs):
    policy, env_fn, policy_kwargs = CASES[case]
    return DrM(policy, DummyVecEnv([env_fn] * n_envs), seed=seed, **{**fast(**policy_kwargs), **kwargs})


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_multi_env(case):
    model = make(case, n_envs=2)
    model.learn(40)
    assert model.gradient_steps == 2 and model._n_updates == (40 - FAST["learning_starts"]) // 2
    obs = model.get_env().reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (2, *model.action_space.shape) and model.action_space.contains(action[0])


@pytest.mark.parametrize("case", ["cnn-nature-own-actor-encoder", "dict-pixels"])
def test_save_load_and_set_env(tmp_path, case):
    model = make(case)
    model.learn(30)
    obs = model.get_env().reset()
    expected = model.predict(obs, deterministic=True)[0]
    model.save(tmp_path / "model")
    loaded = DrM.load(tmp_path / "model", env=make(case).get_env())
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], expected, atol=1e-6)
    assert loaded.policy.share_features_extractor == model.policy.share_features_extractor
    assert loaded.actor is loaded.policy.actor  # aliases rebuilt, not pickled
    loaded.set_env(make(case, seed=1).get_env())
    loaded.learn(20, reset_num_timesteps=False)
    assert loaded.num_timesteps == 50


def test_exclude_include_saved_params(tmp_path):
    model = make("dict-features", verbose=2)
    model.save(tmp_path / "test_save", exclude=["verbose"])
    model = DrM.load(tmp_path / "test_save.zip")
    assert model.verbose != 2
    model.verbose = 2
    model.save(tmp_path / "test_save", exclude=["verbose"], include=["verbose"])
    model = DrM.load(tmp_path / "test_save.zip")
    assert model.verbose == 2


def test_save_load_dict_replay_buffer_and_no_truncation_warning(tmp_path):
    model = make("dict-pixels", optimize_memory_usage=True)
    model.learn(30)
    model.save_replay_buffer(tmp_path / "buffer")
    other = make("dict-pixels")
    other.load_replay_buffer(tmp_path / "buffer")
    assert other.replay_buffer.size() == model.replay_buffer.size() == 30
    np.random.seed(0)
    ours = model.replay_buffer.sample(8)
    np.random.seed(0)
    theirs = other.replay_buffer.sample(8)
    for key in ours.observations:
        assert th.equal(ours.observations[key], theirs.observations[key])
        assert th.equal(ours.next_observations[key], theirs.next_observations[key])
    assert th.equal(ours.rewards, theirs.rewards)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(10)  # SB3 truncates the last trajectory with optimize_memory_usage: a no-op here
    assert not [w for w in caught if "truncated" in str(w.message)]


class SubClassedBox(spaces.Box):
    pass


class SubClassedSpaceEnv(gym.Env):
    """SB3's ``CustomSubClassedSpaceEnv``: observation and action spaces are subclasses of ``Box``."""

    def __init__(self):
        self.observation_space = SubClassedBox(-1, 1, (5,), np.float32)
        self.action_space = SubClassedBox(-1, 1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def test_predict_on_subclassed_spaces_and_shapes():
    model = DrM("MlpPolicy", SubClassedSpaceEnv(), seed=0, **FAST)
    model.learn(20)
    obs = model.observation_space.sample()
    assert model.predict(obs)[0].shape == (2,)  # not vectorised
    assert model.predict(obs[None].repeat(3, 0))[0].shape == (3, 2)  # vectorised
    dict_model = make("dict-features")
    single = DictObsEnv("features").observation_space.sample()
    assert dict_model.predict(single)[0].shape == (2,)


def test_callbacks_on_dict_observations(tmp_path):
    model = make("dict-pixels")
    eval_env = VecTransposeImage(DummyVecEnv([lambda: Monitor(DictObsEnv("pixels"))]))
    checkpoint = EveryNTimesteps(n_steps=10, callback=CheckpointCallback(save_freq=1, save_path=str(tmp_path)))
    evaluation = EvalCallback(eval_env, n_eval_episodes=1, eval_freq=20,
                              callback_on_new_best=StopTrainingOnRewardThreshold(reward_threshold=1.0))  # fmt: skip
    model.learn(1000, callback=CallbackList([checkpoint, evaluation, StopTrainingOnMaxEpisodes(max_episodes=2)]))
    assert model.num_timesteps == 2 * 20  # stopped after two 20-step episodes
    assert len(list(tmp_path.glob("rl_model_*_steps.zip"))) == 4
    assert evaluation.n_calls == 40 and evaluation.last_mean_reward <= 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_deterministic_training(case):
    results = []
    for _ in range(2):
        model = make(case, seed=3)
        model.learn(30)
        env = model.get_env()
        obs = env.reset()
        actions, rewards = [], []
        for _ in range(5):
            action, _ = model.predict(obs, deterministic=False)
            obs, reward, *_ = env.step(action)
            actions.append(action)
            rewards.append(reward)
        params = th.cat([p.detach().flatten() for p in model.policy.parameters()])
        results.append((np.array(actions), np.array(rewards), params))
    (actions_a, rewards_a, params_a), (actions_b, rewards_b, params_b) = results
    np.testing.assert_array_equal(actions_a, actions_b)
    np.testing.assert_array_equal(rewards_a, rewards_b)
    assert th.equal(params_a, params_b)


class FlattenBatchNormDropoutExtractor(BaseFeaturesExtractor):
    """SB3's test extractor: Flatten, BatchNorm1d, Dropout(0.5)."""

    def __init__(self, observation_space):
        super().__init__(observation_space, get_flattened_obs_dim(observation_space))
        self.flatten = nn.Flatten()
        self.batch_norm = nn.BatchNorm1d(self._features_dim)
        self.dropout = nn.Dropout(0.5)

    def forward(self, observations):
        return self.dropout(self.batch_norm(self.flatten(observations)))


def clone_batch_norm_stats(batch_norm):
    return batch_norm.bias.detach().clone(), batch_norm.running_mean.clone()


def test_train_eval_mode_with_batch_norm_and_dropout():
    kwargs = fast(features_extractor_class=FlattenBatchNormDropoutExtractor)
    model = DrM("MlpPolicy", "Pendulum-v1", variant="drm_mw", seed=0, **{**kwargs, "learning_starts": 500})
    batch_norm = model.policy.features_extractor.batch_norm
    bias, running_mean = clone_batch_norm_stats(batch_norm)
    model.learn(30)  # collection only: eval mode, BatchNorm statistics untouched
    assert th.equal(bias, batch_norm.bias) and th.equal(running_mean, batch_norm.running_mean)

    model = DrM("MlpPolicy", "Pendulum-v1", variant="drm_mw", seed=0, **kwargs)
    batch_norm = model.policy.features_extractor.batch_norm
    bias, running_mean = clone_batch_norm_stats(batch_norm)
    model.learn(30)  # gradient steps in training mode: statistics and parameters change
    assert not th.equal(bias, batch_norm.bias) and not th.equal(running_mean, batch_norm.running_mean)

    obs = model.get_env().reset()
    _, running_mean = clone_batch_norm_stats(batch_norm)
    first = model.predict(obs, deterministic=True)[0]
    assert all(np.array_equal(first, model.predict(obs, deterministic=True)[0]) for _ in range(5))  # no dropout
    assert th.equal(running_mean, batch_norm.running_mean)  # predict runs in eval mode
    assert not model.policy.features_extractor.training and not model.critic.training
    assert model.critic_target.training  # the reference keeps drm_mw's target dropout on


def test_n_step_returns_with_dict_observations():
    model = make("dict-features", n_steps=3, gamma=0.5)
    model.learn(30)
    samples = model.replay_buffer.sample(64)
    assert th.all(samples.discounts == 0.5**3)  # reference rule: complete 3-step windows only
    assert model._n_updates > 0
