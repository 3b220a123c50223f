"""Save/load (model, policy, replay buffer) and seeded determinism of DrM."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.vec_env import DummyVecEnv
from test_drm_run import FAST, feature_env, pixel_venv

from pvrw.drm import DrM, LinearStepSchedule
from pvrw.drm.policies import CnnPolicy



def _make(policy, variant="drm", seed=0, **kwargs):
    env = {"CnnPolicy": pixel_venv, "MlpPolicy": feature_env, "PiegPolicy": lambda: feature_env((128, 2, 2))}[policy]()
    return DrM(policy, env, variant=variant, seed=seed, dormant_perturb_interval=30, **FAST, **kwargs)


def _optimizer_tensors(optimizer):
    state = optimizer.state_dict()["state"]
    return [v for key in sorted(state) for v in state[key].values() if th.is_tensor(v)]


@pytest.mark.parametrize("policy, variant", [("CnnPolicy", "drm"), ("MlpPolicy", "drm_mw"), ("PiegPolicy", "drm")])
def test_save_load_identical_predictions_and_state(tmp_path, policy, variant):
    model = _make(policy, variant, stddev_schedule="linear(1.0,0.2,300)")
    model.learn(50)
    assert model.perturbations and model.awaken_step is not None
    obs = model.get_env().reset()
    observations = np.concatenate([obs] * 4)
    actions, _ = model.predict(observations, deterministic=True)
    model.save(tmp_path / "model")

    loaded = DrM.load(tmp_path / "model", env=model.get_env())
    assert np.array_equal(loaded.predict(observations, deterministic=True)[0], actions)
    for name in ("dormant_ratio", "awaken_step", "perturbations", "variant", "n_steps", "gamma", "target_lambda"):
        assert getattr(loaded, name) == getattr(model, name)
    assert loaded.stddev_schedule == LinearStepSchedule(1.0, 0.2, 300)
    assert loaded.exploration_std() == model.exploration_std()
    for original, restored in zip(model.policy.optimizers, loaded.policy.optimizers):
        tensors = _optimizer_tensors(original)
        assert tensors and all(th.equal(a, b) for a, b in zip(tensors, _optimizer_tensors(restored)))
    target = dict(model.critic_target.named_parameters())
    for name, param in loaded.critic_target.named_parameters():
        assert th.equal(param, target[name])
    assert loaded.critic_target.training  # the target critic keeps its training mode after a load
    loaded.learn(10, reset_num_timesteps=False)  # and training goes on


def test_save_load_policy_alone(tmp_path):
    model = _make("CnnPolicy")
    model.learn(30)
    observations = np.concatenate([model.get_env().reset()] * 3)
    model.policy.save(tmp_path / "policy.pth")
    policy = CnnPolicy.load(tmp_path / "policy.pth")
    assert type(policy) is CnnPolicy and policy.augment and policy.features_extractor.features_dim == 32 * 1 * 1
    assert np.array_equal(
        policy.predict(observations, deterministic=True)[0], model.predict(observations, deterministic=True)[0]
    )


def test_save_load_replay_buffer(tmp_path):
    model = _make("MlpPolicy")
    model.learn(40)
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    size = model.replay_buffer.size()
    np.random.seed(3)
    before = model.replay_buffer.sample(8)
    model.replay_buffer = None
    model.load_replay_buffer(tmp_path / "buffer.pkl")
    assert model.replay_buffer.size() == size
    np.random.seed(3)
    after = model.replay_buffer.sample(8)
    for field in ("observations", "actions", "next_observations", "rewards", "dones", "discounts"):
        assert th.equal(getattr(before, field), getattr(after, field))
    model.learn(20, reset_num_timesteps=False)
    assert model.replay_buffer.size() > size


@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
def test_seeded_runs_are_identical(policy):
    def run():
        model = _make(policy, seed=7)
        model.learn(40)
        return model

    first, second = run(), run()
    assert first.perturbations == second.perturbations and first.dormant_ratio == second.dormant_ratio
    buffer_a, buffer_b = first.replay_buffer, second.replay_buffer
    assert np.array_equal(buffer_a.actions, buffer_b.actions) and np.array_equal(buffer_a.rewards, buffer_b.rewards)
    for (name, a), b in zip(first.policy.state_dict().items(), second.policy.state_dict().values()):
        assert th.equal(a, b), name
    other = _make(policy, seed=8)
    other.learn(40)
    assert not np.array_equal(other.replay_buffer.actions, buffer_a.actions)


def test_load_without_env_predicts(tmp_path):
    model = _make("MlpPolicy")
    model.learn(20)
    model.save(tmp_path / "m.zip")
    loaded = DrM.load(tmp_path / "m.zip", device="cpu")
    obs = DummyVecEnv([feature_env]).reset()
    assert np.array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
