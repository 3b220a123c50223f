"""DrMReplayBuffer: samples exactly what a naive buffer of stacked observations would."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.buffers import NStepReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecFrameStack

from pvrw.drm.buffers import DrMReplayBuffer, infer_frame_stack
from pvrw.drm.replay_memory import format_memory_table, replay_memory_report

ACTION_SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)


# ---------------------------------------------------------------------------------------------------- data + naive
@dataclass
class Step:
    obs: np.ndarray
    next_obs: np.ndarray
    action: np.ndarray
    reward: float
    done: bool
    timeout: bool
    episode: int


@dataclass
class FakeStackedEnvs:
    """n_envs episodic envs emitting frame stacks (oldest first) of random frames, with terminations, time-limit
    truncations and (optionally) resets without a done, as `learn()` called again would do."""

    n_envs: int
    k: int
    frame_shape: tuple[int, ...]
    dtype: type
    seed: int = 0
    pad: str = "zeros"  # Meta-World zero-pads the first stack; DMC repeats the first frame
    max_len: int = 9
    cut_prob: float = 0.0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)
        self.episode_counter = 0
        self.stacks = [self._reset() for _ in range(self.n_envs)]
        self.episode = [self._new_episode() for _ in range(self.n_envs)]

    def _frame(self):
        if self.dtype == np.uint8:
            return self.rng.integers(0, 256, self.frame_shape, dtype=np.uint8)
        return self.rng.normal(0, 10, self.frame_shape).astype(self.dtype)

    def _reset(self):
        first = self._frame()
        older = [np.zeros_like(first) if self.pad == "zeros" else first.copy() for _ in range(self.k - 1)]
        return [*older, first]

    def _new_episode(self):
        self.episode_counter += 1
        length = int(self.rng.integers(1, self.max_len + 1))
        return {"id": self.episode_counter, "left": length, "trunc": bool(self.rng.random() < 0.5)}

    def step(self):
        """:return: the add() arguments and the Step records of each env"""
        obs, next_obs, dones, infos, records = [], [], [], [], []
        actions = self.rng.uniform(-1, 1, (self.n_envs, 2)).astype(np.float32)
        rewards = self.rng.normal(size=self.n_envs).astype(np.float32)
        for e in range(self.n_envs):
            if self.cut_prob and self.rng.random() < self.cut_prob:  # reset without done
                self.stacks[e], self.episode[e] = self._reset(), self._new_episode()
            stack = self.stacks[e]
            nxt = [*stack[1:], self._frame()]
            ep = self.episode[e]
            ep["left"] -= 1
            done = ep["left"] == 0
            timeout = done and ep["trunc"]
            obs.append(np.concatenate(stack)), next_obs.append(np.concatenate(nxt))
            dones.append(done), infos.append({"TimeLimit.truncated": timeout} if timeout else {})
            records.append(Step(obs[-1], next_obs[-1], actions[e], float(rewards[e]), done, timeout, ep["id"]))
            if done:
                self.stacks[e], self.episode[e] = self._reset(), self._new_episode()
            else:
                self.stacks[e] = nxt
        return (np.stack(obs), np.stack(next_obs), actions, rewards, np.array(dones), infos), records


class NaiveBuffer:
    """Every transition kept whole, in time order; n-step windows built by explicit loops."""

    def __init__(self, n_envs, capacity, n_steps, gamma, rule, k, frame_capacity=None):
        self.history = [[] for _ in range(n_envs)]
        self.capacity, self.n_steps, self.gamma, self.rule, self.k = capacity, n_steps, gamma, rule, k
        self.frame_capacity = frame_capacity

    def add(self, records):
        for e, record in enumerate(records):
            self.history[e].append(record)

    def _frames_alive(self, env):
        """Chronological indices whose whole obs stack is still among the last frame_capacity frames stored:
        an episode stores its first stack (k frames), then one frame per step."""
        if self.frame_capacity is None:
            return set(range(len(self.history[env])))
        newest, total, prev_episode, prev_done = [], 0, None, True
        for step in self.history[env]:
            total += self.k if (prev_done or step.episode != prev_episode) else 0
            newest.append(total - 1)
            total += 1
            prev_episode, prev_done = step.episode, step.done
        return {c for c, n in enumerate(newest) if n - self.k + 1 >= total - self.frame_capacity}

    def expected(self, slot, env):
        """:return: None if not sampleable, else (obs, action, next_obs, done, n-step return, discount)"""
        history = self.history[env]
        stored = [c for c in range(len(history)) if c % self.capacity == slot and c >= len(history) - self.capacity]
        if not stored or stored[0] not in self._frames_alive(env):
            return None
        c = stored[0]
        window = [history[c]]
        while len(window) < self.n_steps and not window[-1].done:
            j = c + len(window)
            if j >= len(history) or history[j].episode != history[c].episode:
                break
            window.append(history[j])
        if self.rule == "reference" and len(window) < self.n_steps:
            return None
        ret = sum(self.gamma**i * s.reward for i, s in enumerate(window))
        last = window[-1]
        return (
            history[c].obs,
            history[c].action,
            last.next_obs,
            float(last.done and not last.timeout),
            ret,
            self.gamma ** len(window),
        )


def fill(buffer, naive, envs, n_adds, sb3=None):
    for _ in range(n_adds):
        args, records = envs.step()
        buffer.add(*args)
        naive.add(records)
        if sb3 is not None:
            sb3.add(*args)


def assert_matches_naive(buffer, naive):
    """Same sampleable set; same obs/action/next_obs/done/return/discount at every sampleable (slot, env)."""
    slots, envs = np.meshgrid(np.arange(buffer.buffer_size), np.arange(buffer.n_envs), indexing="ij")
    slots, envs = slots.ravel(), envs.ravel()
    expected = [naive.expected(s, e) for s, e in zip(slots, envs, strict=True)]
    sampleable = np.array([x is not None for x in expected])
    np.testing.assert_array_equal(buffer.is_sampleable(slots, envs), sampleable)
    assert sampleable.any()
    batch = buffer._get_samples(slots[sampleable], env_indices=envs[sampleable])
    for i, exp in enumerate(x for x in expected if x is not None):
        obs, action, next_obs, done, ret, discount = exp
        np.testing.assert_array_equal(batch.observations[i].numpy(), obs.astype(np.float32) if obs.dtype != np.uint8 else obs)
        np.testing.assert_array_equal(batch.actions[i].numpy(), action)
        np.testing.assert_array_equal(batch.next_observations[i].numpy(), next_obs)
        assert batch.dones[i].item() == done
        assert batch.rewards[i].item() == pytest.approx(ret, rel=1e-5, abs=1e-5)
        assert batch.discounts[i].item() == pytest.approx(discount, rel=1e-6)
    return sampleable


PIXELS = dict(k=3, frame_shape=(3, 10, 11), dtype=np.uint8)
FEATURES = dict(k=3, frame_shape=(1, 6), dtype=np.float32)


def make_pair(kind, rule, n_envs=2, capacity=40, n_steps=3, gamma=0.9, frame_capacity=None, **env_kwargs):
    spec = PIXELS if kind == "pixels" else FEATURES
    envs = FakeStackedEnvs(n_envs, spec["k"], spec["frame_shape"], spec["dtype"], **env_kwargs)
    obs_shape = (spec["k"] * spec["frame_shape"][0], *spec["frame_shape"][1:])
    space = spaces.Box(0, 255, obs_shape, np.uint8) if kind == "pixels" else spaces.Box(-np.inf, np.inf, obs_shape, np.float32)
    buffer = DrMReplayBuffer(
        capacity * n_envs,
        space,
        ACTION_SPACE,
        "cpu",
        n_envs=n_envs,
        n_steps=n_steps,
        gamma=gamma,
        n_step_rule=rule,
        frame_capacity=frame_capacity,
    )
    naive = NaiveBuffer(n_envs, capacity, n_steps, gamma, rule, spec["k"], buffer.frame_capacity)
    return buffer, naive, envs, space


# --------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", ["pixels", "features"])
@pytest.mark.parametrize("rule", ["reference", "truncated"])
@pytest.mark.parametrize("pad", ["zeros", "repeat"])
@pytest.mark.parametrize("frame_capacity", [None, 400])  # default (short episodes evict by frames) / roomy
def test_matches_naive_stacked_buffer(kind, rule, pad, frame_capacity):
    """Episodes of 1..9 steps, terminations and truncations, 2 envs, before and after the ring wraps."""
    seed = len(kind) * 7 + len(rule) * 3 + len(pad)
    buffer, naive, envs, _ = make_pair(kind, rule, pad=pad, seed=seed, frame_capacity=frame_capacity)
    fill(buffer, naive, envs, 25)  # not yet full
    assert not buffer.full
    assert_matches_naive(buffer, naive)
    fill(buffer, naive, envs, 83)  # wrapped twice, pos in the middle
    assert buffer.full and buffer.pos != 0
    assert_matches_naive(buffer, naive)


def test_frame_ring_eviction_never_serves_overwritten_frames():
    """A frame ring smaller than the transitions need: exactly the transitions whose frames survive are sampled."""
    buffer, naive, envs, _ = make_pair("pixels", "reference", capacity=40, frame_capacity=2 * 36, max_len=4)
    fill(buffer, naive, envs, 130)
    sampleable = assert_matches_naive(buffer, naive)
    assert sampleable.sum() < buffer.buffer_size * buffer.n_envs * 0.8  # eviction by frames did happen


@pytest.mark.parametrize("kind", ["pixels", "features"])
def test_truncated_rule_equals_sb3_nstep_buffer(kind):
    """Same adds, same (slot, env) draws: identical to SB3's NStepReplayBuffer on every stored slot."""
    buffer, naive, envs, space = make_pair(kind, "truncated", seed=3, frame_capacity=2 * 200)  # no frame eviction
    sb3 = NStepReplayBuffer(buffer.buffer_size * 2, space, ACTION_SPACE, "cpu", n_envs=2, n_steps=3, gamma=0.9)
    for n_adds in (17, 70):  # before and after wrap-around
        fill(buffer, naive, envs, n_adds, sb3)
        batch_inds = np.arange(buffer.buffer_size if buffer.full else buffer.pos).repeat(4)
        np.random.seed(0)
        ours = buffer._get_samples(batch_inds)
        np.random.seed(0)
        theirs = sb3._get_samples(batch_inds)
        for name in ours._fields:
            a, b = getattr(ours, name), getattr(theirs, name)
            if name == "rewards":
                th.testing.assert_close(a, b)
            else:
                assert th.equal(a, b.to(a.dtype)), name
        assert buffer.sampleable_mask()[: len(np.unique(batch_inds))].all()
        np.testing.assert_array_equal(buffer.observations, sb3.observations)
        np.testing.assert_array_equal(buffer.next_observations, sb3.next_observations)


def test_sample_draws_only_valid_windows_uniformly():
    buffer, naive, envs, _ = make_pair("features", "reference", seed=5)
    fill(buffer, naive, envs, 60)
    by_action = {}
    for e in range(2):
        for slot in range(buffer.buffer_size):
            exp = naive.expected(slot, e)
            if exp is not None:
                by_action[exp[1].tobytes()] = exp
    np.random.seed(1)
    batch = buffer.sample(4000)
    counts = dict.fromkeys(by_action, 0)
    for i in range(4000):
        key = batch.actions[i].numpy().tobytes()
        assert key in by_action, "sampled a transition the naive reference buffer would not sample"
        np.testing.assert_array_equal(batch.observations[i].numpy(), by_action[key][0])
        assert batch.discounts[i].item() == pytest.approx(0.9**3)
        counts[key] += 1
    # uniform over the valid starts: every count within 5 binomial standard deviations of its mean
    mean = 4000 / len(counts)
    assert all(abs(c - mean) < 5 * np.sqrt(mean) for c in counts.values()), sorted(counts.values())


def test_episode_boundaries_and_truncation_bootstrap_by_hand():
    """One env, n=3, gamma=0.5: episode A (4 steps, time limit), episode B (3 steps, terminated)."""
    space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    kwargs = dict(n_steps=3, gamma=0.5)
    ref = DrMReplayBuffer(100, space, ACTION_SPACE, "cpu", n_step_rule="reference", **kwargs)
    trunc = DrMReplayBuffer(100, space, ACTION_SPACE, "cpu", n_step_rule="truncated", **kwargs)
    rewards = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    obs = [10.0, 11.0, 12.0, 13.0, 14.0, 20.0, 21.0, 22.0, 23.0]  # A: 10..14 (14 terminal), B: 20..23 (23 terminal)
    steps = [
        (0, 1, False, False),
        (1, 2, False, False),
        (2, 3, False, False),
        (3, 4, True, True),
        (5, 6, False, False),
        (6, 7, False, False),
        (7, 8, True, False),
    ]
    for t, (o, no, done, timeout) in enumerate(steps):
        for buffer in (ref, trunc):
            buffer.add(
                np.array([[obs[o]]]),
                np.array([[obs[no]]]),
                np.zeros((1, 2)),
                np.array([rewards[t]]),
                np.array([done]),
                [{"TimeLimit.truncated": timeout}],
            )
    # reference: full windows inside an episode only -> starts A0, A1, B0
    np.testing.assert_array_equal(np.flatnonzero(ref.sampleable_mask()[:, 0]), [0, 1, 4])
    b = ref._get_samples(np.array([0, 1, 4]), env_indices=np.zeros(3, dtype=int))
    np.testing.assert_allclose(b.rewards.ravel(), [1 + 1 + 1, 2 + 2 + 2, 16 + 16 + 16])
    np.testing.assert_allclose(b.discounts.ravel(), [0.125] * 3)
    np.testing.assert_allclose(b.next_observations.ravel(), [13.0, 14.0, 23.0])
    np.testing.assert_allclose(b.dones.ravel(), [0.0, 0.0, 1.0])  # time limit bootstraps, termination does not
    # truncated (SB3) rule: windows stop at the episode end, discount gamma**m
    b = trunc._get_samples(np.arange(7), env_indices=np.zeros(7, dtype=int))
    np.testing.assert_allclose(b.rewards.ravel(), [3, 6, 4 + 4, 8, 48, 32 + 32, 64])
    np.testing.assert_allclose(b.discounts.ravel(), [0.125, 0.125, 0.25, 0.5, 0.125, 0.25, 0.5])
    np.testing.assert_allclose(b.next_observations.ravel(), [13, 14, 14, 14, 23, 23, 23])
    np.testing.assert_allclose(b.dones.ravel(), [0, 0, 0, 0, 1, 1, 1])


def test_handle_timeout_termination_false_makes_time_limits_terminal():
    buffer, naive, envs, _ = make_pair("features", "truncated", seed=11)
    buffer.handle_timeout_termination = False
    fill(buffer, naive, envs, 30)
    batch = buffer._get_samples(np.arange(30), env_indices=np.zeros(30, dtype=int))
    ends = np.array([naive.history[0][c].done for c in range(30)])
    assert ends.any()
    lengths = buffer.window_lengths(np.arange(30), np.zeros(30, dtype=int))
    last_done = np.array([naive.history[0][c + m - 1].done for c, m in enumerate(lengths)])
    np.testing.assert_array_equal(batch.dones.numpy().ravel(), last_done.astype(np.float32))


def test_reset_without_done_starts_a_new_episode():
    """learn() called again resets the env without a done: windows must not cross into the new episode."""
    buffer, naive, envs, _ = make_pair("pixels", "reference", seed=7, cut_prob=0.15)
    fill(buffer, naive, envs, 70)
    assert_matches_naive(buffer, naive)


def test_done_ends_episode_even_when_the_reset_obs_equals_the_terminal_obs():
    space = spaces.Box(-np.inf, np.inf, (2, 3), np.float32)
    buffer = DrMReplayBuffer(50, space, ACTION_SPACE, "cpu", n_steps=3, gamma=0.9)
    obs = np.zeros((1, 2, 3), np.float32)  # constant observations: only `done` tells episodes apart
    for t in range(12):
        buffer.add(obs, obs, np.zeros((1, 2)), np.ones(1), np.array([t % 4 == 3]), [{}])
    np.testing.assert_array_equal(np.flatnonzero(buffer.sampleable_mask()[:, 0]), [0, 1, 4, 5, 8, 9])
    batch = buffer._get_samples(np.array([0, 1]), env_indices=np.zeros(2, dtype=int))
    np.testing.assert_allclose(batch.dones.ravel(), [0.0, 1.0])
    assert buffer.frames_written[0] == 3 * (2 + 4)  # each episode: its first stack (2 frames) + one per step


def test_not_a_frame_stack_raises_clear_error():
    space = spaces.Box(0, 255, (9, 10, 10), np.uint8)
    buffer = DrMReplayBuffer(20, space, ACTION_SPACE, "cpu")
    assert buffer.frame_stack == 3
    rng = np.random.default_rng(0)
    obs, next_obs = rng.integers(0, 256, (2, 1, 9, 10, 10), dtype=np.uint8)
    with pytest.raises(ValueError, match="frame_stack=1"):
        buffer.add(obs, next_obs, np.zeros((1, 2)), np.zeros(1), np.zeros(1), [{}])
    whole = DrMReplayBuffer(20, space, ACTION_SPACE, "cpu", frame_stack=1)
    whole.add(obs, next_obs, np.zeros((1, 2)), np.zeros(1), np.zeros(1), [{}])
    batch = whole._get_samples(np.array([0]), env_indices=np.array([0]))
    np.testing.assert_array_equal(batch.next_observations[0], next_obs[0])


def test_frame_stack_inference_and_bad_arguments():
    assert infer_frame_stack(spaces.Box(0, 255, (9, 84, 84), np.uint8)) == 3
    assert infer_frame_stack(spaces.Box(0, 255, (84, 84, 3), np.uint8)) == 1
    assert infer_frame_stack(spaces.Box(0, 255, (4, 84, 84), np.uint8)) == 1
    assert infer_frame_stack(spaces.Box(-np.inf, np.inf, (3, 128, 14, 14), np.float32)) == 3
    assert infer_frame_stack(spaces.Box(-np.inf, np.inf, (2, 768), np.float32)) == 2
    assert infer_frame_stack(spaces.Box(-np.inf, np.inf, (768,), np.float32)) == 1
    space = spaces.Box(0, 255, (9, 10, 10), np.uint8)
    with pytest.raises(ValueError, match="does not divide"):
        DrMReplayBuffer(10, space, ACTION_SPACE, frame_stack=2)
    with pytest.raises(ValueError, match="storage_dtype"):
        DrMReplayBuffer(10, space, ACTION_SPACE, storage_dtype=np.float16)
    with pytest.raises(ValueError, match="n_step_rule"):
        DrMReplayBuffer(10, space, ACTION_SPACE, n_step_rule="naive")
    with pytest.raises(NotImplementedError):
        DrMReplayBuffer(10, space, ACTION_SPACE, optimize_memory_usage=True, handle_timeout_termination=False)
    empty = DrMReplayBuffer(10, space, ACTION_SPACE, n_steps=3)
    with pytest.raises(ValueError, match="no sampleable transition"):
        empty.sample(4)


def test_float16_storage():
    buffer, _, envs, space = make_pair("features", "reference", seed=2)
    half = DrMReplayBuffer(80, space, ACTION_SPACE, "cpu", n_envs=2, n_steps=3, gamma=0.9, storage_dtype=np.float16)
    for _ in range(50):
        args, _ = envs.step()
        buffer.add(*args)
        half.add(*args)
    assert half.frames.dtype == np.float16 and half.frames.nbytes * 2 == buffer.frames.nbytes
    inds, env_inds = np.nonzero(buffer.sampleable_mask())
    full_batch = buffer._get_samples(inds, env_indices=env_inds)
    half_batch = half._get_samples(inds, env_indices=env_inds)
    assert half_batch.observations.dtype == th.float32
    # float16 storage = the float32 observations rounded to float16, nothing else changes
    th.testing.assert_close(half_batch.observations, full_batch.observations.half().float(), rtol=0, atol=0)
    th.testing.assert_close(half_batch.next_observations, full_batch.next_observations.half().float(), rtol=0, atol=0)
    th.testing.assert_close(half_batch.rewards, full_batch.rewards)
    assert not th.equal(half_batch.observations, full_batch.observations)
    big = np.zeros((2, 3, 6), dtype=np.float32)
    big[1] = 1e5  # env 1 only: nothing at all may be written
    written, pos = half.frames_written.copy(), half.pos
    with pytest.raises(ValueError, match="float16 range"):
        half.add(big, big, np.zeros((2, 2)), np.zeros(2), np.ones(2), [{}, {}])
    assert half.pos == pos and np.array_equal(half.frames_written, written)


def test_pickle_round_trip_and_reset():
    buffer, naive, envs, _ = make_pair("pixels", "reference", seed=4)
    fill(buffer, naive, envs, 60)
    clone = pickle.loads(pickle.dumps(buffer))
    inds, env_inds = np.nonzero(buffer.sampleable_mask())
    a = buffer._get_samples(inds, env_indices=env_inds)
    b = clone._get_samples(inds, env_indices=env_inds)
    assert all(th.equal(x, y) for x, y in zip(a, b, strict=True))
    # the clone keeps its episode state: adding more continues the episodes
    fill(clone, naive, envs, 10)
    assert_matches_naive(clone, naive)
    clone.reset()
    assert clone.size() == 0 and not clone.sampleable_mask().any()


def test_td3_with_vec_frame_stack_equals_sb3_buffer_and_save_load(tmp_path):
    """Real SB3 collection (VecFrameStack terminal observations, time limits, 2 envs): DrMReplayBuffer holds what
    SB3's NStepReplayBuffer holds; save_replay_buffer/load_replay_buffer and extend work; TD3 trains on it."""

    def collect(buffer_class, kwargs, learning_starts=10_000):
        venv = VecFrameStack(make_vec_env(lambda: gym.make("Pendulum-v1", max_episode_steps=13), n_envs=2, seed=0), 3)
        model = TD3(
            "MlpPolicy",
            venv,
            buffer_size=60,
            learning_starts=learning_starts,
            seed=0,
            gamma=0.9,
            device="cpu",
            policy_kwargs=dict(net_arch=[8]),
            replay_buffer_class=buffer_class,
            replay_buffer_kwargs=dict(n_steps=3, gamma=0.9, **kwargs),
        )
        model.learn(80)
        return model

    sb3 = collect(NStepReplayBuffer, {}).replay_buffer
    model = collect(DrMReplayBuffer, dict(frame_stack=3, n_step_rule="truncated", frame_capacity=200))
    ours = model.replay_buffer
    assert ours.full and ours.pos == sb3.pos
    np.testing.assert_array_equal(ours.observations, sb3.observations)
    np.testing.assert_array_equal(ours.next_observations, sb3.next_observations)
    batch_inds = np.arange(ours.buffer_size).repeat(2)
    np.random.seed(0)
    a = ours._get_samples(batch_inds)
    np.random.seed(0)
    b = sb3._get_samples(batch_inds)
    for x, y in zip(a, b, strict=True):
        th.testing.assert_close(x, y)

    path = tmp_path / "buffer.pkl"
    model.save_replay_buffer(path)
    model.replay_buffer = None
    model.load_replay_buffer(path)
    np.testing.assert_array_equal(model.replay_buffer.observations, ours.observations)
    np.testing.assert_array_equal(model.replay_buffer.frames, ours.frames)
    infos = [[{}, {}] for _ in range(ours.buffer_size)]
    model.replay_buffer.extend(ours.observations, ours.next_observations, ours.actions, ours.rewards, ours.dones, infos)

    trained = collect(DrMReplayBuffer, dict(frame_stack=3), learning_starts=30)
    assert trained._n_updates > 0 and trained.replay_buffer.n_step_rule == "reference"
    assert trained.replay_buffer.frames.nbytes < sb3.observations.nbytes / 2  # default capacity: frames stored once


def test_memory_report_sanity():
    pixels = spaces.Box(0, 255, (9, 12, 12), np.uint8)
    action = spaces.Box(-1, 1, (4,), np.float32)
    report = replay_memory_report(pixels, action, n_steps=3, buffer_size=1000, episode_length=50)
    frame = 3 * 12 * 12
    # frames stored once: between one frame per transition and one frame plus first stacks and slack
    assert frame < report.drm_bytes_per_transition < frame * (1 + 3 / 50 + 0.05) + 40
    assert report.sb3_bytes_per_transition == 2 * 3 * frame + 4 * 4 + 3 * 4
    assert report.reference_bytes_per_transition == pytest.approx((3 * frame + 4 * 4 + 2 * 4) * 51 / 50)
    ratio = report.reference_bytes_per_transition / report.drm_bytes_per_transition
    assert 0.85 * 3 < ratio < 3.1  # the stacked reference stores every frame ~k times
    assert report.drm_total_bytes == pytest.approx(1000 * report.drm_bytes_per_transition)
    features = spaces.Box(-np.inf, np.inf, (3, 64), np.float32)
    fp32 = replay_memory_report(features, action, 3, 1000, episode_length=50)
    fp16 = replay_memory_report(features, action, 3, 1000, episode_length=50, storage_dtype=np.float16)
    assert fp16.drm_bytes_per_transition < 0.6 * fp32.drm_bytes_per_transition
    table = format_memory_table([dataclasses.replace(report, label="pixels 12"), fp16])
    assert "pixels 12" in table and "float16" in table
