"""make_env beyond Meta-World (any Gymnasium id rendered to frames) and clear errors for bad input."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from pvrw.envs import make_env, make_vec_env, scripted_expert


class _GradientEnv(gym.Env):
    """Renders a 40x50 image whose brightness encodes the step count; reward 1 per step; success after 3 steps."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-1, 1, (1,), np.float32)
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = int(self.np_random.integers(0, 5))
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 1.0, False, False, {"is_success": self.t >= 3}

    def render(self):
        frame = np.zeros((40, 50, 3), np.uint8)
        frame[..., 0] = 10 * self.t
        frame[:, 25:, 1] = 200  # right half green: resizing must keep it on the right
        return frame


gym.register("PvrwTest/Gradient-v0", entry_point=_GradientEnv, max_episode_steps=100)


def test_any_gymnasium_env_gives_resized_stacked_frames():
    env = make_env("PvrwTest/Gradient-v0", resolution=16, frame_stack=2, action_repeat=3, seed=0,
                   max_episode_steps=4)
    assert env.observation_space.shape == (6, 16, 16)
    obs, _ = env.reset()
    t0 = obs[3, 0, 0] // 10
    assert not obs[:3].any() and (obs[3] == 10 * t0).all()
    assert obs[4, :, :7].max() == 0 and obs[4, :, 9:].min() == 200  # left/right kept
    obs, reward, terminated, truncated, info = env.step(np.zeros(1, np.float32))
    assert reward == 3.0 and (obs[3] == 10 * (t0 + 3)).all()  # 3 repeated steps, summed, rendered after the last
    assert info["success_now"] and info["success"] and info["is_success"]
    for _ in range(3):
        *_, truncated, _ = env.step(np.zeros(1, np.float32))
    assert truncated  # 4 agent steps
    # seeding: same seed, same first frame sequence
    a = make_env("PvrwTest/Gradient-v0", resolution=16, seed=3)
    b = make_env("PvrwTest/Gradient-v0", resolution=16, seed=3)
    assert [a.reset()[0][-3, 0, 0] for _ in range(4)] == [b.reset()[0][-3, 0, 0] for _ in range(4)]


def test_gymnasium_mujoco_env_renders_at_resolution():
    env = make_env("InvertedPendulum-v5", resolution=24, frame_stack=1, seed=0, render_quality="fast")
    obs, _ = env.reset()
    assert obs.shape == (3, 24, 24) and obs.any()
    assert env.unwrapped.mujoco_renderer.width == 24  # rendered at that size, not resized
    _, reward, *_ = env.step(np.zeros(1, np.float32))
    assert reward == 2.0  # survive reward 1 per simulator step, two steps per agent step
    env.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(env_id="metaworld/push-v2"), r"only -v3 tasks.*'metaworld/push-v3'"),
        (dict(env_id="metaworld/drawer-open-v2"), r"metaworld/drawer-open-v3"),
        (dict(env_id="metaworld/psuh-v3"), r"Unknown Meta-World task 'psuh-v3'.*metaworld/push-v3.*Only -v3"),
        (dict(env_id="metaworld/drawer-opn"), r"Close names:.*metaworld/drawer-open-v3"),
        (dict(env_id="push-v3"), r"write it as 'metaworld/push-v3'"),
        (dict(env_id="NoSuchEnv-v0"), r"neither a Meta-World id.*nor a registered Gymnasium id"),
        (dict(env_id="metaworld/push-v3", resolution=0), r"resolution 0 is not supported"),
        (dict(env_id="metaworld/push-v3", resolution=100000), r"resolution 100000 is not supported"),
        (dict(env_id="metaworld/push-v3", resolution="112"), r"resolution must be an integer"),
        (dict(env_id="metaworld/push-v3", resolution=112.0), r"resolution must be an integer"),
        (dict(env_id="metaworld/push-v3", render_quality="ultra"), r"render_quality must be one of"),
        (dict(env_id="metaworld/push-v3", camera="corner9"), r"Unknown Meta-World camera 'corner9'.*corner4"),
        (dict(env_id="metaworld/push-v3", orientation="flipped"), r"orientation must be one of"),
        (dict(env_id="metaworld/push-v3", goal_mode="mt50"), r"goal_mode must be one of"),
        (dict(env_id="metaworld/push-v3", frame_stack=0), r"frame_stack must be an integer >= 1"),
        (dict(env_id="metaworld/push-v3", action_repeat=0), r"action_repeat must be an integer >= 1"),
        (dict(env_id="metaworld/push-v3", stack_init="ones"), r"stack_init must be one of"),
        (dict(env_id="metaworld/push-v3", max_episode_steps=0), r"max_episode_steps must be a positive"),
    ],
)
def test_bad_input_gives_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_env(**kwargs)


def test_bad_vector_and_expert_input():
    with pytest.raises(ValueError, match="n_envs must be an integer >= 1"):
        make_vec_env("metaworld/push-v3", 0)
    with pytest.raises(ValueError, match="vectorization_mode must be one of"):
        make_vec_env("metaworld/push-v3", 2, vectorization_mode="threads")
    with pytest.raises(ValueError, match="scripted_expert needs a single Meta-World env"):
        scripted_expert(make_env("PvrwTest/Gradient-v0", resolution=16))
    env = make_env("metaworld/push-v3", resolution=16, render_quality="fast")
    with pytest.raises(RuntimeError, match="reset the env"):
        scripted_expert(env)(None)
    env.close()
