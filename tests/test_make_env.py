"""make_env on Meta-World: spaces, frame stack, action repeat, success semantics, episode length, seeding."""

import numpy as np
import pytest

from pvrw.envs import benchmark_tasks, make_env, scripted_expert

FAST = dict(resolution=32, render_quality="fast")


def _frames(obs: np.ndarray) -> list[np.ndarray]:
    return [obs[i : i + 3] for i in range(0, obs.shape[0], 3)]


def test_observation_space_and_zero_padded_stack():
    env = make_env("metaworld/push-v3", frame_stack=3, seed=0, **FAST)
    assert env.observation_space.shape == (9, 32, 32) and env.observation_space.dtype == np.uint8
    obs, _ = env.reset()
    assert obs.shape == (9, 32, 32) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    oldest, middle, newest = _frames(obs)
    assert not oldest.any() and not middle.any() and newest.mean() > 20  # DrM's Meta-World wrapper zero-pads
    obs1, *_ = env.step(env.action_space.sample())
    assert np.array_equal(obs1[:6], obs[3:])  # shifted by one frame, oldest first
    obs2, *_ = env.step(env.action_space.sample())
    assert np.array_equal(obs2[:3], obs[6:]) and np.array_equal(obs2[3:6], obs1[6:])
    env.close()


def test_repeat_stack_init_repeats_first_frame():
    env = make_env("metaworld/push-v3", frame_stack=2, seed=0, stack_init="repeat", **FAST)
    obs, _ = env.reset()
    assert np.array_equal(obs[:3], obs[3:]) and obs.any()
    env.close()


def test_action_repeat_sums_rewards_and_reports_success_per_sim_step():
    """An action_repeat=2 env must equal an action_repeat=1 env fed every action twice (same seed)."""
    n_agent_steps = 45  # the push expert first succeeds after about 32 agent steps
    env2 = make_env("metaworld/push-v3", frame_stack=1, action_repeat=2, seed=3, **FAST)
    env1 = make_env("metaworld/push-v3", frame_stack=1, action_repeat=1, seed=3, max_episode_steps=500, **FAST)
    obs2, _ = env2.reset()
    obs1, _ = env1.reset()
    assert np.array_equal(obs1, obs2)
    expert = scripted_expert(env2)
    sim_success = []
    for _ in range(n_agent_steps):
        action = expert(obs2)
        obs2, reward2, term2, trunc2, info2 = env2.step(action)
        inner_rewards = []
        for _ in range(2):
            obs1, reward1, _, _, info1 = env1.step(action)
            inner_rewards.append(reward1)
            sim_success.append(info1["success_now"])
        assert reward2 == pytest.approx(sum(inner_rewards), rel=1e-9)
        assert np.array_equal(obs2, obs1)  # rendered once, after the last repeated step
        assert info2["success_now"] == sim_success[-1]
        assert info2["success"] == any(sim_success) == info2["is_success"]
        assert not term2 and not trunc2
    assert any(sim_success), "the push expert should have succeeded within 45 agent steps"
    env1.close(), env2.close()


@pytest.mark.parametrize("task", ["push-v3", "drawer-open-v3"])
def test_scripted_expert_solves_task_with_episode_semantics(task):
    env = make_env(f"metaworld/{task}", frame_stack=1, seed=0, **FAST)
    obs, _ = env.reset()
    expert = scripted_expert(env)
    steps, any_now, success_trace = 0, False, []
    while True:
        obs, reward, terminated, truncated, info = env.step(expert(obs))
        steps += 1
        any_now |= info["success_now"]
        success_trace.append(info["success"])
        assert not terminated  # Meta-World never terminates on success, as in DrM
        assert info["is_success"] == info["success"]
        assert info["success"] >= any_now  # any-step success includes every last-sub-step success seen
        if truncated:
            break
    assert steps == 250  # 250 agent steps = 500 simulator steps
    assert env.unwrapped.curr_path_length == 500
    assert success_trace[-1], f"scripted expert failed {task}"
    first = success_trace.index(True)
    assert all(success_trace[first:]) and not any(success_trace[:first])  # monotone
    env.close()


def test_episode_length_follows_max_episode_steps_beyond_metaworld_limit():
    env = make_env("metaworld/reach-v3", frame_stack=1, action_repeat=4, max_episode_steps=130, seed=0,
                   resolution=16, render_quality="fast")
    env.reset()
    for step in range(1, 131):  # 520 simulator steps: Meta-World alone would raise after 500
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert truncated == (step == 130) and not terminated
    env.close()


def _episode_goals(env, n, **reset_kwargs):
    goals = []
    for i in range(n):
        env.reset(**(reset_kwargs if i == 0 else {}))
        goals.append(env.unwrapped._target_pos.copy())
    return np.array(goals)


def test_seeding_gives_reproducible_distinct_episodes():
    a = make_env("metaworld/push-v3", seed=11, **FAST)
    b = make_env("metaworld/push-v3", seed=11, **FAST)
    c = make_env("metaworld/push-v3", seed=12, **FAST)
    goals_a, goals_b, goals_c = (_episode_goals(e, 4) for e in (a, b, c))
    assert np.array_equal(goals_a, goals_b)
    assert len({tuple(g) for g in goals_a}) == 4  # a fresh goal every episode
    assert not np.allclose(goals_a, goals_c)
    # same seed and actions -> identical pixels and rewards
    obs_a, _ = a.reset(seed=5)
    obs_b, _ = b.reset(seed=5)
    assert np.array_equal(obs_a, obs_b)
    for action in np.random.default_rng(0).uniform(-1, 1, (5, 4)).astype(np.float32):
        oa, ra, *_ = a.step(action)
        ob, rb, *_ = b.step(action)
        assert np.array_equal(oa, ob) and ra == rb
    # reset(seed=k) reseeds: env c now replays env a's seed-11 sequence
    assert np.array_equal(_episode_goals(c, 4, seed=11), goals_a)
    # seed=None draws a fresh seed per env
    d = make_env("metaworld/push-v3", seed=None, **FAST)
    e = make_env("metaworld/push-v3", seed=None, **FAST)
    assert not np.allclose(_episode_goals(d, 2), _episode_goals(e, 2))
    for env in (a, b, c, d, e):
        env.close()


def test_first_frame_after_reset_shows_new_goal():
    env = make_env("metaworld/push-v3", frame_stack=1, seed=0, **FAST)
    raw = env.unwrapped
    for _ in range(3):
        obs, _ = env.reset()
        goal_site = raw.data.site_xpos[raw.model.site("goal").id]
        assert np.allclose(goal_site, raw._target_pos)  # the simulator state the frame shows has the new goal
        state = env.get_wrapper_attr("state_observation")
        assert np.allclose(state[-3:], raw._target_pos) and np.allclose(state[4:7], raw._get_pos_objects())
        assert np.array_equal(obs, env.render().transpose(2, 0, 1))
    env.close()


def test_fixed_goal_mode_cycles_through_the_50_benchmark_configurations():
    tasks = benchmark_tasks("reach-v3", 0)
    assert len(tasks) == 50
    import pickle

    expected = [pickle.loads(t.data)["rand_vec"] for t in tasks]
    env = make_env("metaworld/reach-v3", goal_mode="fixed", seed=1, resolution=16, render_quality="fast")
    other = make_env("metaworld/reach-v3", goal_mode="fixed", seed=2, resolution=16, render_quality="fast")
    seen = []
    for i in range(51):
        _, info = env.reset()
        assert info["task_index"] == i % 50
        seen.append(env.unwrapped._last_rand_vec.copy())
    assert all(np.array_equal(seen[i], expected[i % 50]) for i in range(51))
    _, info = other.reset(options={"task_index": 7})
    assert np.array_equal(other.unwrapped._last_rand_vec, expected[7]) and info["task_index"] == 7
    _, info = other.reset()
    assert info["task_index"] == 8
    env.close(), other.close()
