"""PVRObservation / VecPVRObservation / VectorPVRObservation on a cheap deterministic pixel env.

Backbones are random-weight ResNet18 trunks at 16-32 px (cheap); the embed-once logic is checked by counting the
frames that reach the backbone.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from pvrw.backbones.registry import RandomWeightsWarning
from pvrw.pvr_wrappers import PVRObservation, VecPVRObservation, create_backbone
from pvrw.pvr_wrappers.wrappers import FrameLayout, VectorPVRObservation, random_shift

warnings.filterwarnings("ignore", category=RandomWeightsWarning)



class PixelEnv(gym.Env):
    """Deterministic uint8 frames (a function of the reset seed and the step), stacked on the channel axis.

    :param layout: ``"chw"`` -> (3k,H,W); ``"hwc"`` -> (H,W,3k); ``"kchw"`` -> (k,3,H,W).
    :param stack_init: ``"zeros"`` or ``"repeat"`` for the older slots at reset.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, size=32, k=3, layout="chw", stack_init="zeros", episode_len=6, render_mode=None):
        self.size, self.k, self.layout, self.stack_init, self.episode_len = size, k, layout, stack_init, episode_len
        self.render_mode = render_mode
        shape = {"chw": (3 * k, size, size), "hwc": (size, size, 3 * k), "kchw": (k, 3, size, size)}[layout]
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self._episode = 0

    def _frame(self, t):
        return np.random.default_rng([self._episode, t]).integers(0, 256, (3, self.size, self.size), dtype=np.uint8)

    def _obs(self):
        frames = list(self._stack)
        if self.layout == "chw":
            return np.concatenate(frames, 0)
        if self.layout == "hwc":
            return np.concatenate([f.transpose(1, 2, 0) for f in frames], -1)
        return np.stack(frames)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._episode = int(self.np_random.integers(1 << 30))
        self.t = 0
        first = self._frame(0)
        fill = np.zeros_like(first) if self.stack_init == "zeros" else first
        self._stack = [fill] * (self.k - 1) + [first]
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self._stack = self._stack[1:] + [self._frame(self.t)]
        reward = float(np.asarray(action, np.float64).sum()) * 0.01
        return self._obs(), reward, self.t >= self.episode_len, False, {}

    def render(self):
        return self._stack[-1].transpose(1, 2, 0).copy()


class Counting:
    """A backbone proxy counting embed calls and frames (contract #2 interface)."""

    def __init__(self, backbone):
        self.inner, self.calls, self.frames = backbone, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed(self, frames, batch_size=64):
        self.calls += 1
        self.frames += len(frames)
        return self.inner.embed(frames, batch_size=batch_size)


@pytest.fixture(scope="module")
def resnet32():
    return create_backbone("resnet18", weights="random", resolution=32)


def expected(backbone, obs, layout):
    return backbone.embed(FrameLayout(layout).frames(obs))


@pytest.mark.parametrize("layout", ["chw", "hwc", "kchw"])
def test_stack_embedded_once_per_step(resnet32, layout):
    counting = Counting(resnet32)
    env = PVRObservation(PixelEnv(layout=layout), counting)
    assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (3, 128, 4, 4), np.float32)
    obs, _ = env.reset(seed=0)
    assert (counting.calls, counting.frames) == (1, 2)  # zero padding embedded once + the first frame
    raw = env.env._obs()
    np.testing.assert_allclose(obs, expected(resnet32, raw, env.env.observation_space.shape), rtol=1e-5, atol=1e-5)
    for step in range(1, 5):
        obs, *_ = env.step(env.action_space.sample())
        assert (counting.calls, counting.frames) == (1 + step, 2 + step)  # one new frame per step
        raw = env.env._obs()
        np.testing.assert_allclose(obs, expected(resnet32, raw, env.env.observation_space.shape),
                                   rtol=1e-5, atol=1e-5)
    assert env.observation_space.contains(obs)


def test_repeat_init_and_static_frames_embedded_once(resnet32):
    counting = Counting(resnet32)
    env = PVRObservation(PixelEnv(stack_init="repeat"), counting)
    env.reset(seed=1)
    assert counting.frames == 1
    env.env._frame = lambda t: np.full((3, 32, 32), 7, np.uint8)  # nothing moves: new frames equal the last one
    env.step(env.action_space.sample())
    env.step(env.action_space.sample())
    assert counting.frames == 2  # the constant frame once; then the whole stack is known


def test_single_frame_hwc_and_render_source(resnet32):
    env = PVRObservation(PixelEnv(k=1, layout="hwc"), resnet32)
    assert env.observation_space.shape == (1, 128, 4, 4)
    obs, _ = env.reset(seed=0)
    rendered = PVRObservation(PixelEnv(k=3, render_mode="rgb_array"), resnet32, source="render")
    assert rendered.observation_space.shape == (1, 128, 4, 4)
    robs, _ = rendered.reset(seed=0)
    np.testing.assert_allclose(robs, obs, rtol=1e-5, atol=1e-5)  # same seed -> same last frame
    with pytest.raises(ValueError, match="pass resolution="):
        PVRObservation(PixelEnv(render_mode="rgb_array"), "resnet18", weights="random", source="render")


def test_errors_name_the_problem(resnet32):
    class Vector(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
        action_space = gym.spaces.Discrete(2)

    with pytest.raises(ValueError, match="no uint8 RGB frames.*source='render'"):
        PVRObservation(Vector(), resnet32)
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        PVRObservation(Vector(), resnet32, source="render")
    with pytest.raises(ValueError, match="no uint8 RGB frames. The vectorised wrappers read frames from observations "
                                         "only.*PVRObservation\\(env, ..., source='render'\\) before vectorising"):
        VectorPVRObservation(gym.vector.SyncVectorEnv([Vector]), resnet32)
    with pytest.raises(ValueError, match="Unknown backbone 'dino'.*Known backbones"):
        PVRObservation(PixelEnv(), "dino", weights="random")
    with pytest.raises(ValueError, match="multiple of 14.*resolution="):
        PVRObservation(PixelEnv(size=32), "dinov2", weights="random")
    for wrap, env in ((PVRObservation, PixelEnv()), (VectorPVRObservation, gym.vector.SyncVectorEnv([PixelEnv]))):
        with pytest.raises(ValueError, match="augment=True.*pass cache=None or augment=False"):
            wrap(env, resnet32, augment=True, cache="x.h5")
    env = PVRObservation(PixelEnv(), resnet32)
    with pytest.raises(ValueError, match="uint8 observation of shape"):
        env.observation(np.zeros((9, 32, 32), np.float32))


def test_render_source_with_two_mujoco_envs_in_one_process(resnet32):
    def make(env_id):
        env = gym.make(env_id, render_mode="rgb_array", width=32, height=32)
        return PVRObservation(env, resnet32, source="render")

    pendulum, reacher = make("InvertedPendulum-v5"), make("Reacher-v5")
    first, _ = pendulum.reset(seed=0)
    other, _ = reacher.reset(seed=0)
    assert np.abs(first - other).max() > 1e-3  # two different scenes
    np.testing.assert_allclose(pendulum.observation(None), first, atol=1e-5)  # its own scene, not the last drawn
    pendulum.close()
    reacher.close()


def test_resolution_resizes_frames(resnet32):
    env = PVRObservation(PixelEnv(size=48), "resnet18", weights="random", resolution=32)
    assert env.backbone.resolution == 32 and env.observation_space.shape == (3, 128, 4, 4)
    assert env.reset(seed=0)[0].shape == (3, 128, 4, 4)


def test_augment_shifts_and_reembeds(resnet32):
    counting = Counting(resnet32)
    env = PVRObservation(PixelEnv(stack_init="repeat"), counting, augment=True)
    env.reset(seed=3)
    env.step(env.action_space.sample())  # stack [f0, f0, f1]: both distinct frames re-embedded (shifted)
    env.step(env.action_space.sample())  # stack [f0, f1, f2]: all three again, nothing reused
    assert counting.frames == 1 + 2 + 3
    frames = np.arange(2 * 3 * 8 * 8, dtype=np.uint8).reshape(2, 3, 8, 8)
    shifts = {random_shift(frames, 2, np.random.default_rng(s)).tobytes() for s in range(10)}
    assert len(shifts) > 1 and all(len(b) == frames.nbytes for b in shifts)


def test_sb3_vec_augment_follows_the_seed(resnet32):
    from stable_baselines3.common.vec_env import DummyVecEnv

    def first_obs(seed):
        vec = VecPVRObservation(DummyVecEnv([PixelEnv, PixelEnv]), resnet32, augment=True)
        vec.seed(seed)
        return vec.reset()

    np.testing.assert_array_equal(first_obs(3), first_obs(3))


def test_gymnasium_env_checker(resnet32):
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(PVRObservation(PixelEnv(), resnet32), skip_render_check=True)


def test_sb3_vec_wrapper_batches_and_matches_single_envs(resnet32):
    from stable_baselines3.common.vec_env import DummyVecEnv

    n = 3
    counting = Counting(resnet32)
    venv = DummyVecEnv([lambda i=i: PixelEnv(episode_len=3 + i) for i in range(n)])
    venv.seed(10)
    vec = VecPVRObservation(venv, counting)
    singles = [PVRObservation(PixelEnv(episode_len=3 + i), resnet32) for i in range(n)]
    obs = vec.reset()
    assert obs.shape == (n, 3, 128, 4, 4) and counting.calls == 1
    ref = [s.reset(seed=10 + i)[0] for i, s in enumerate(singles)]
    np.testing.assert_allclose(obs, np.stack(ref), rtol=1e-4, atol=1e-4)
    terminal_seen = 0
    for step in range(6):
        actions = np.zeros((n, 2), np.float32)
        calls = counting.calls
        obs, _, dones, infos = vec.step(actions)
        assert counting.calls == calls + 1  # one backbone call for all sub-envs, terminal observations included
        for i, single in enumerate(singles):
            s_obs, _, term, trunc, _ = single.step(actions[i])
            if dones[i]:
                terminal_seen += 1
                np.testing.assert_allclose(infos[i]["terminal_observation"], s_obs, rtol=1e-4, atol=1e-4)
                s_obs, _ = single.reset()
            np.testing.assert_allclose(obs[i], s_obs, rtol=1e-4, atol=1e-4)
    assert terminal_seen >= n


def test_gymnasium_vector_wrapper_matches_single_envs(resnet32):
    n = 2
    counting = Counting(resnet32)
    venv = gym.vector.SyncVectorEnv([lambda: PixelEnv(episode_len=20) for _ in range(n)])
    vec = VectorPVRObservation(venv, counting)
    assert vec.single_observation_space.shape == (3, 128, 4, 4)
    obs, _ = vec.reset(seed=5)
    singles = [PVRObservation(PixelEnv(episode_len=20), resnet32) for _ in range(n)]
    ref = [s.reset(seed=5 + i)[0] for i, s in enumerate(singles)]
    np.testing.assert_allclose(obs, np.stack(ref), rtol=1e-4, atol=1e-4)
    for _ in range(3):
        calls = counting.calls
        actions = np.zeros((n, 2), np.float32)
        obs, *_ = vec.step(actions)
        assert counting.calls == calls + 1
        ref = [s.step(a)[0] for s, a in zip(singles, actions)]
        np.testing.assert_allclose(obs, np.stack(ref), rtol=1e-4, atol=1e-4)


def test_sb3_sac_smoke(resnet32):
    from stable_baselines3 import SAC

    env = PVRObservation(PixelEnv(size=16, episode_len=20), "resnet18", weights="random")
    model = SAC("MlpPolicy", env, learning_starts=100, buffer_size=400, batch_size=16, seed=0,
                policy_kwargs=dict(net_arch=[16]), verbose=0)
    before = [p.detach().clone() for p in model.actor.parameters()]
    model.learn(300)
    assert model.num_timesteps == 300
    assert model.replay_buffer.observations.shape[2:] == (3, 128, 2, 2)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.actor.parameters()))


def test_real_make_env_if_available(resnet32):
    metaworld_env = pytest.importorskip("pvrw.envs.factory")
    counting = Counting(resnet32)
    env = PVRObservation(metaworld_env.make_env("metaworld/reach-v3", resolution=32, frame_stack=3, seed=0,
                                                render_quality="fast", max_episode_steps=5), counting)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 128, 4, 4) and counting.frames == 2  # zero padding + first frame
    obs, _, _, _, info = env.step(env.action_space.sample())
    assert counting.frames == 3 and "success" in info
    np.testing.assert_allclose(obs, resnet32.embed(env.embedder.state[0].frames), rtol=1e-5, atol=1e-5)


def test_cache_path_wraps_cached_backbone(resnet32, tmp_path):
    pytest.importorskip("pvrw.feature_cache.content_cache")
    path = tmp_path / "features.h5"
    first = Counting(resnet32)
    env = PVRObservation(PixelEnv(), first, cache=path)
    assert type(env.backbone).__name__ == "CachedBackbone"
    obs = [env.reset(seed=0)[0]] + [env.step(env.action_space.sample())[0] for _ in range(3)]
    assert first.frames == 2 + 3
    env.backbone.close()
    again = Counting(resnet32)
    env = PVRObservation(PixelEnv(), again, cache=path)
    replay = [env.reset(seed=0)[0]] + [env.step(env.action_space.sample())[0] for _ in range(3)]
    assert again.frames == 0  # every frame came from the cache
    np.testing.assert_allclose(np.stack(replay), np.stack(obs), rtol=1e-6, atol=1e-6)
    env.backbone.close()


def test_closing_the_env_writes_the_cached_features(resnet32, tmp_path):
    pytest.importorskip("pvrw.feature_cache.content_cache")
    env = PVRObservation(PixelEnv(), resnet32, cache=tmp_path / "features.h5")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    assert env.backbone.cache_info()["written"] == 0  # buffered: fewer rows than flush_every
    env.close()
    assert env.backbone.cache_info()["written"] == 3  # zero padding + 2 frames, written when the env closed
    env.backbone.close()


def test_gymnasium_vector_same_step_autoreset(resnet32):
    from gymnasium.vector import AutoresetMode

    counting = Counting(resnet32)
    venv = gym.vector.SyncVectorEnv([lambda i=i: PixelEnv(episode_len=2 + i) for i in range(2)],
                                    autoreset_mode=AutoresetMode.SAME_STEP)
    vec = VectorPVRObservation(venv, counting)
    single = PVRObservation(PixelEnv(episode_len=2), resnet32)
    vec.reset(seed=7)
    single.reset(seed=7)
    actions = np.zeros((2, 2), np.float32)
    vec.step(actions)
    single.step(actions[0])
    calls = counting.calls
    obs, _, term, _, infos = vec.step(actions)  # env 0 ends here and resets within the same step
    assert term[0] and not term[1] and counting.calls == calls + 1
    s_obs, *_ = single.step(actions[0])
    np.testing.assert_allclose(infos["final_obs"][0], s_obs, rtol=1e-4, atol=1e-4)
    assert infos["final_obs"][1] is None
    assert obs.shape == (2, 3, 128, 4, 4) and np.isfinite(obs).all()


def test_env_reusing_its_observation_buffer(resnet32):
    """An env that writes each observation into the same array must not fool the embed-once logic."""

    class InPlace(PixelEnv):
        def _obs(self):
            if not hasattr(self, "_buffer"):
                self._buffer = np.empty(self.observation_space.shape, np.uint8)
            self._buffer[...] = super()._obs()
            return self._buffer

    env = PVRObservation(InPlace(), resnet32)
    env.reset(seed=2)
    for _ in range(3):
        obs, *_ = env.step(env.action_space.sample())
        np.testing.assert_allclose(obs, expected(resnet32, env.env._buffer, (9, 32, 32)), rtol=1e-5, atol=1e-5)
