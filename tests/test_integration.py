"""The pieces together, as the README and DESIGN promise them: Meta-World pixels -> PVR features -> DrM / SAC.

CPU only, random weights, tiny images and networks. ``dinov2_reg`` is used by its registered name where one step is
enough; training runs use a one-block twin of it (same code path: timm ViT, CLS + 4 register tokens, 3840 values).
"""

import json
import subprocess
import sys
import textwrap
import warnings
from collections import defaultdict
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

from pvrw import DrM, DrMReplayBuffer, PVRObservation, VecPVRObservation, make_env, make_vec_env, scripted_expert
from pvrw.backbones.registry import RandomWeightsWarning

TASK = "metaworld/push-v3"
TINY = dict(hidden_dim=32, feature_dim=8)
FAST = dict(learning_starts=16, batch_size=8, buffer_size=300, policy_kwargs=TINY)
TWIN = "itest_dinov2_reg"


def pixel_env(resolution=28, steps=10, seed=0, **kwargs):
    return make_env(TASK, resolution=resolution, render_quality="fast", max_episode_steps=steps, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def twin():
    """``dinov2_reg`` with one transformer block, registered for this module and removed afterwards."""
    from backbone_helpers import registered_backbones

    from pvrw.backbones import dinov2 as backbones

    with registered_backbones({TWIN: backbones.dinov2_reg(depth=1)}):
        yield TWIN


@pytest.fixture(autouse=True)
def quiet_random_weights():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        yield


def feature_env(backbone, **kwargs):
    return PVRObservation(pixel_env(**kwargs), backbone, weights="random")


class RecordObservations(gym.Wrapper):
    """Keeps every observation the env returned, with its episode, step and the reward that led to it."""

    def __init__(self, env):
        super().__init__(env)
        self.seen: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
        self.rewards: list[list[float]] = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.rewards.append([])
        self.seen[obs.tobytes()].append((len(self.rewards) - 1, 0))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.rewards[-1].append(float(reward))
        self.seen[obs.tobytes()].append((len(self.rewards) - 1, len(self.rewards[-1])))
        return obs, reward, terminated, truncated, info


class ExpertPredictor:
    """``predict`` of Meta-World's scripted expert for the env under the wrappers (it reads the simulator state)."""

    def __init__(self, env):
        self.expert = scripted_expert(env)

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return self.expert()[None], None


def evaluate_with_final_infos(model, env, n_eval_episodes):
    """SB3's ``evaluate_policy`` (episode rewards and lengths) and the info dict of every episode's last step."""
    infos = []

    def at_episode_end(local_vars, _globals):
        if local_vars["done"]:
            infos.append(local_vars["info"])

    rewards, lengths = evaluate_policy(
        model, env, n_eval_episodes=n_eval_episodes, return_episode_rewards=True, callback=at_episode_end
    )
    assert len(infos) == n_eval_episodes
    return rewards, lengths, infos


def test_readme_snippet_in_a_fresh_process():
    """README order of imports in one new interpreter (lazy exports, GL backend before mujoco), registered name."""
    script = textwrap.dedent(
        f"""
        import json, warnings
        warnings.simplefilter("ignore")
        from pvrw import PVRObservation, DrM, make_env

        env = make_env("{TASK}", resolution=28, render_quality="fast", max_episode_steps=5, seed=0)
        env = PVRObservation(env, "dinov2_reg", weights="random")
        model = DrM("MlpPolicy", env, seed=0, buffer_size=100, policy_kwargs=dict(hidden_dim=16, feature_dim=4))
        obs, _ = env.reset(seed=0)
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, info = env.step(action)
        print(json.dumps(dict(shape=list(obs.shape), dtype=str(obs.dtype), finite=bool(abs(obs).max() < 1e30),
                              action_ok=bool(env.action_space.contains(action)), reward=float(reward),
                              success=info["success"], is_success=info["is_success"])))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [3, 3840] and result["dtype"] == "float32" and result["finite"]
    assert result["action_ok"] and np.isfinite(result["reward"])
    assert result["is_success"] == result["success"] and isinstance(result["success"], bool)


def test_mlp_policy_on_pvr_features_learn_save_load_evaluate(tmp_path, twin):
    env = feature_env(twin)
    assert env.observation_space.shape == (3, 3840)
    model = DrM("MlpPolicy", env, seed=0, **FAST)
    model.learn(48)
    assert model._n_updates > 0 and model.dormant_ratio < 1.0
    buffer = model.replay_buffer
    assert isinstance(buffer, DrMReplayBuffer) and buffer.frame_stack == 3 and buffer.frame_shape == (1, 3840)
    # the policy's input is the flattened stack; the frozen backbone is no part of the trained model
    assert model.actor.trunk[0].in_features == 3 * 3840
    assert not any(p is q for p in model.policy.parameters() for q in env.backbone.parameters())

    observations = buffer.sample(16).observations.cpu().numpy()
    actions, _ = model.predict(observations, deterministic=True)
    model.save(tmp_path / "model")
    model.save_replay_buffer(tmp_path / "buffer")
    loaded = DrM.load(tmp_path / "model", env=env)
    assert np.array_equal(loaded.predict(observations, deterministic=True)[0], actions)
    loaded.load_replay_buffer(tmp_path / "buffer")
    assert loaded.replay_buffer.size() == buffer.size()
    assert np.array_equal(loaded.replay_buffer.frames, buffer.frames)

    rewards, lengths, infos = evaluate_with_final_infos(loaded, env, n_eval_episodes=2)
    assert lengths == [10, 10] and np.all(np.isfinite(rewards))
    for info in infos:  # what SB3's EvalCallback / Monitor read: is_success, the any-step success
        assert info["is_success"] == info["success"] and isinstance(info["success"], (bool, np.bool_))
        assert "success_now" in info and info["TimeLimit.truncated"]
    # a policy that does solve push-v3 (Meta-World's scripted expert, ~32 steps) is reported as a success
    expert_env = feature_env(twin, steps=40)
    _, _, expert_infos = evaluate_with_final_infos(ExpertPredictor(expert_env), expert_env, n_eval_episodes=1)
    assert expert_infos[0]["is_success"] and expert_infos[0]["success"]
    loaded.learn(20, reset_num_timesteps=False)  # resumes from the saved counters
    assert loaded.num_timesteps == 68 and loaded._n_updates > model._n_updates


def test_pieg_policy_on_resnet18_maps(tmp_path):
    env = PVRObservation(pixel_env(resolution=32), "resnet18", weights="random")
    assert env.observation_space.shape == (3, 128, 4, 4)  # PIE-G trunk: stride 8
    model = DrM("PiegPolicy", env, seed=0, **FAST)
    trained = sum(p.numel() for p in model.policy.features_extractor.parameters())
    assert trained == 2 * 2 * 128 * 4 * 4 * 1024 + 1024 + 2 * 1024  # PIE-G head: Linear + LayerNorm, nothing else
    model.learn(30)
    assert model._n_updates > 0
    observations = model.replay_buffer.sample(8).observations.cpu().numpy()
    actions, _ = model.predict(observations, deterministic=True)
    model.save(tmp_path / "pieg")
    assert np.array_equal(DrM.load(tmp_path / "pieg").predict(observations, deterministic=True)[0], actions)


def test_cnn_policy_on_pixels_buffer_stores_frames_once_and_returns_real_stacks():
    recorder = RecordObservations(pixel_env(resolution=32, steps=8))
    model = DrM("CnnPolicy", recorder, seed=0, **FAST)
    model.learn(40)
    assert model._n_updates > 0 and model.policy.augment
    buffer = model.replay_buffer
    assert isinstance(buffer, DrMReplayBuffer) and buffer.frame_stack == 3 and buffer.frame_shape == (3, 32, 32)

    # memory: one frame per transition (plus one stack per 100 steps of slack) against SB3's 2 stacks per transition
    sb3 = ReplayBuffer(FAST["buffer_size"], model.observation_space, model.action_space, device="cpu")
    frame_bytes = 3 * 32 * 32
    assert buffer.frames.nbytes == buffer.frame_capacity * frame_bytes
    assert buffer.frame_capacity <= FAST["buffer_size"] + 3 * -(-FAST["buffer_size"] // 100)
    assert sb3.observations.nbytes + sb3.next_observations.nbytes == 2 * FAST["buffer_size"] * 3 * frame_bytes
    assert buffer.nbytes() * 5 < sb3.observations.nbytes + sb3.next_observations.nbytes

    # every sampled (obs, next_obs) pair is a real pair of stacks the env returned n steps apart in one episode
    n, gamma = buffer.n_steps, buffer.gamma
    samples = buffer.sample(64)
    obs = samples.observations.cpu().numpy()
    next_obs = samples.next_observations.cpu().numpy()
    for i in range(len(obs)):
        starts = recorder.seen.get(obs[i].tobytes(), [])
        ends = set(recorder.seen.get(next_obs[i].tobytes(), []))
        pairs = [(ep, t) for ep, t in starts if (ep, t + n) in ends]
        assert pairs, f"sample {i} is not a pair of observations the env returned {n} steps apart"
        ep, t = pairs[0]
        expected = sum(gamma**j * recorder.rewards[ep][t + j] for j in range(n))
        assert samples.rewards[i].item() == pytest.approx(expected, rel=1e-5)
    assert np.allclose(samples.discounts.cpu().numpy(), gamma**n)
    assert not samples.dones.any()  # Meta-World episodes end by the time limit only


def test_two_sb3_envs_with_vec_pvr_observation(twin):
    """Several envs for SB3: DummyVecEnv of make_env + VecPVRObservation (one backbone call per step)."""
    venv = VecPVRObservation(DummyVecEnv([partial(pixel_env, seed=seed) for seed in (0, 1)]), twin, weights="random")
    model = DrM("MlpPolicy", venv, seed=0, **FAST)
    assert model.n_envs == 2 and model.gradient_steps == 2  # one update per train_freq transitions, as the reference
    model.learn(40)
    buffer = model.replay_buffer
    assert buffer.n_envs == 2 and model.num_timesteps == 40 and model._n_updates > 0
    stored = buffer.frames_written
    assert np.array_equal(stored, [stored[0]] * 2) and stored[0] > 0
    # different seeds -> different goals -> different observations stored per env
    assert not np.array_equal(buffer.frames[: stored[0], 0], buffer.frames[: stored[0], 1])
    actions, _ = model.predict(venv.reset(), deterministic=True)
    assert actions.shape == (2, 4)


def test_feature_cache_under_drm(tmp_path, twin):
    """PVRObservation(cache=...) feeding DrM: the features DrM stored come back from the file for a replayed episode."""
    from pvrw import create_backbone

    backbone = create_backbone(twin, weights="random", resolution=28)  # one backbone for both envs, as a run does
    path = tmp_path / "features.h5"
    env = PVRObservation(pixel_env(), backbone, cache=path)
    model = DrM("MlpPolicy", env, seed=0, **FAST)  # seeds the env: the first episode starts from reset(seed=0)
    model.learn(30)
    first_obs = model.replay_buffer.observations[0, 0].copy()
    env.close()  # writes the buffered rows

    replay = PVRObservation(pixel_env(), backbone, cache=path)
    obs, _ = replay.reset(seed=0)
    assert replay.backbone.stats.misses == 0 and replay.backbone.stats.hits > 0
    assert np.array_equal(obs, first_obs)
    replay.close()


def test_gymnasium_vector_env_is_refused_with_the_sb3_way():
    venv = make_vec_env(TASK, 2, resolution=28, render_quality="fast", max_episode_steps=5)
    try:
        with pytest.raises(TypeError, match="DummyVecEnv"):
            DrM("CnnPolicy", venv, **FAST)
        model = DrM("CnnPolicy", pixel_env(steps=5), **FAST)
        with pytest.raises(TypeError, match="VecPVRObservation"):  # set_env and load take the same path
            model.set_env(venv)
    finally:
        venv.close()


def test_sb3_sac_on_pvr_features_unchanged(twin):
    env = feature_env(twin)
    model = SAC(
        "MlpPolicy", env, learning_starts=10, batch_size=8, buffer_size=100, seed=0, policy_kwargs=dict(net_arch=[16])
    )
    model.learn(24)
    assert model._n_updates > 0
    assert model.replay_buffer.observations.shape[1:] == (1, 3, 3840)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(action)
