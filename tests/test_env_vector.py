"""Vector envs of Meta-World pixel envs: distinct seeds per sub-env, sync and async (no fork deadlock) agree."""

import os

import numpy as np
import pytest

from pvrw.envs import make_env, make_vec_env

KW = dict(resolution=24, frame_stack=2, render_quality="fast")


def _rollout(vec, actions):
    obs, _ = vec.reset()
    trace = [obs]
    rewards = []
    for action in actions:
        obs, reward, terminated, truncated, info = vec.step(action)
        trace.append(obs)
        rewards.append(reward)
        assert set(info) >= {"success", "success_now", "is_success"}
    return np.array(trace), np.array(rewards)


@pytest.fixture(scope="module")
def actions():
    return np.random.default_rng(0).uniform(-1, 1, (4, 2, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def sync_trace(actions):
    vec = make_vec_env("metaworld/push-v3", 2, seed=10, vectorization_mode="sync", **KW)
    assert vec.num_envs == 2 and vec.single_observation_space.shape == (6, 24, 24)
    trace = _rollout(vec, actions)
    vec.close()
    return trace


def test_sync_vector_env_uses_distinct_seeds_matching_single_envs(sync_trace, actions):
    obs, rewards = sync_trace
    assert obs.shape == (5, 2, 6, 24, 24) and obs.dtype == np.uint8
    assert not np.array_equal(obs[0, 0], obs[0, 1])  # sub-envs seeded 10 and 11 show different goals
    single = make_env("metaworld/push-v3", seed=11, **KW)  # sub-env 1 == a single env with seed 11
    first, _ = single.reset()
    assert np.array_equal(first, obs[0, 1])
    for t, action in enumerate(actions[:, 1]):
        o, r, *_ = single.step(action)
        assert np.array_equal(o, obs[t + 1, 1]) and r == pytest.approx(rewards[t, 1])
    single.close()


@pytest.mark.timeout(240)
def test_async_vector_env_matches_sync(sync_trace, actions):
    # this process has already rendered (sync_trace): forking it would deadlock llvmpipe, forkserver must not
    had_lp_threads = "LP_NUM_THREADS" in os.environ
    vec = make_vec_env("metaworld/push-v3", 2, seed=10, vectorization_mode="async", **KW)
    obs, rewards = _rollout(vec, actions)
    vec.close()
    assert ("LP_NUM_THREADS" in os.environ) == had_lp_threads  # set in the workers only
    assert np.array_equal(obs, sync_trace[0])
    assert np.allclose(rewards, sync_trace[1])
