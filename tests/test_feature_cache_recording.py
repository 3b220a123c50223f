"""Episode recording, resumable feature extraction and the `pvrw record` / `extract` / `cache` commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from click.testing import CliRunner
from gymnasium.wrappers import TimeLimit
from test_feature_cache import _forget_tiny_backbones, tiny_backbone  # noqa: F401 (autouse fixture)

from pvrw.cli import main
from pvrw.feature_cache import (
    EpisodeDataset,
    FeatureCacheError,
    FeatureSetMismatchError,
    FeatureStore,
    hash_frames,
)
from pvrw.feature_cache.extraction import extract_features
from pvrw.feature_cache.recording import make_policy, record_episodes

SIDE = 16


class TinyPixelEnv(gym.Env):
    """A dot moving towards a goal on a 16x16 image; terminates near the goal, ``info["success"]`` when close."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = "rgb_array"):
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 255, (3, SIDE, SIDE), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(0, 1, 2)
        self.goal = self.np_random.uniform(0, 1, 2)
        self.t = 0
        return self._image(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.3 * np.asarray(action), 0, 1)
        self.t += 1
        dist = float(np.linalg.norm(self.pos - self.goal))
        return self._image(), -dist, dist < 0.1, False, {"success": dist < 0.3}

    def _image(self) -> np.ndarray:
        img = np.full((3, SIDE, SIDE), 10 * self.t, dtype=np.uint8)
        for channel, point in ((0, self.pos), (1, self.goal)):
            r, c = (point * (SIDE - 1)).astype(int)
            img[channel, r, c] = 255
        return img

    def render(self) -> np.ndarray:
        return self._image().transpose(1, 2, 0)


gym.register("PvrwCacheTiny-v0", entry_point=TinyPixelEnv, max_episode_steps=50)


class Tape(gym.Wrapper):
    """Keeps what the env really returned, to check the recording against."""

    def __init__(self, env):
        super().__init__(env)
        self.frames, self.actions, self.rewards, self.terminated, self.truncated, self.success = ([] for _ in range(6))

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.frames.append(obs.copy())
        return obs, info

    def step(self, action):
        obs, reward, term, trunc, info = self.env.step(action)
        for store, value in zip(
            (self.frames, self.actions, self.rewards, self.terminated, self.truncated, self.success),
            (obs.copy(), np.array(action), reward, term, trunc, info["success"]),
        ):
            store.append(value)
        return obs, reward, term, trunc, info


def record_tiny(path, episodes=4, seed=0, max_steps=10):
    env = Tape(TimeLimit(TinyPixelEnv(), max_steps))
    summary = record_episodes(
        env, make_policy("random", env, seed=seed), episodes, path, seed=seed, attrs={"env_id": "tiny"}
    )
    return env, summary


def test_recording_round_trip(tmp_path):
    path = tmp_path / "episodes.h5"
    tape, summary = record_tiny(path)
    with EpisodeDataset(path) as ds:
        table = ds.episode_table()
        assert ds.num_episodes == 4 and ds.attrs["env_id"] == "tiny"
        assert ds.num_frames == len(tape.frames) == ds.num_steps + 4
        np.testing.assert_array_equal(ds.frames(), np.stack(tape.frames))
        lengths = table["num_steps"]
        assert set(lengths) <= set(range(1, 11)) and lengths.sum() == len(tape.actions)
        steps = np.cumsum([0, *lengths])
        for e in range(4):
            episode = ds.episode(e)
            s = slice(steps[e], steps[e + 1])
            np.testing.assert_array_equal(episode["frames"], np.stack(tape.frames[s.start + e : s.stop + e + 1]))
            np.testing.assert_array_equal(episode["actions"], np.stack(tape.actions[s]))
            np.testing.assert_array_equal(episode["rewards"], np.float32(tape.rewards[s]))
            np.testing.assert_array_equal(episode["terminated"], tape.terminated[s])
            np.testing.assert_array_equal(episode["truncated"], tape.truncated[s])
            np.testing.assert_array_equal(episode["success"], tape.success[s])
            assert episode["terminated"][-1] or episode["truncated"][-1]
            assert not (episode["terminated"][:-1].any() or episode["truncated"][:-1].any())
        assert table["seed"].tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(table["return"].mean(), summary["mean_return"])
        uuid = ds.uuid
    record_tiny(path, episodes=2, seed=10)  # appends to the same dataset
    with EpisodeDataset(path) as ds:
        assert ds.num_episodes == 6 and ds.uuid == uuid and ds.episode_table()["seed"].tolist()[-2:] == [10, 11]


class InterruptAfter:
    """A backbone that raises KeyboardInterrupt on its n-th embed call (a user pressing Ctrl-C mid-extraction)."""

    def __init__(self, backbone, calls: int):
        self.backbone, self.calls = backbone, calls

    def __getattr__(self, name):
        return getattr(self.backbone, name)

    def embed(self, frames, batch_size=64):
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt
        return self.backbone.embed(frames, batch_size=batch_size)


def test_extraction_resumes_without_duplicates_or_gaps(tmp_path):
    frames_path = tmp_path / "episodes.h5"
    record_tiny(frames_path, episodes=5)
    a, b = tiny_backbone(seed=0, name="fc_tiny_a"), tiny_backbone(seed=1, name="fc_tiny_b")
    with EpisodeDataset(frames_path) as ds:
        frames = ds.frames()
        episodes = [ds.episode(e)["frames"] for e in range(ds.num_episodes)]
    expected = {"fc_tiny_a": a.embed(frames), "fc_tiny_b": b.embed(frames)}

    out = tmp_path / "features.h5"
    with pytest.raises(KeyboardInterrupt):
        extract_features(frames_path, [InterruptAfter(a, 3), b], out, batch_size=8)
    with FeatureStore(out) as store:
        assert len(store.get_set("fc_tiny_a")) == 16 and len(store.get_set("fc_tiny_b")) == 0
    a.frames_seen = b.frames_seen = 0
    report = extract_features(frames_path, [a, b], out, batch_size=8)
    assert report["fc_tiny_a"] == {"done_before": 16, "extracted": len(frames) - 16, "total": len(frames)}
    assert (a.frames_seen, b.frames_seen) == (len(frames) - 16, len(frames))  # nothing computed twice
    assert extract_features(frames_path, [a, b], out)["fc_tiny_b"]["extracted"] == 0
    with FeatureStore(out) as store:
        assert store.num_episodes() == len(episodes)
        for name, features in expected.items():
            fs = store.get_set(name)
            np.testing.assert_allclose(fs.read_range(0, len(fs)), features, rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(fs.hashes(), hash_frames(frames))
            for e, episode_frames in enumerate(episodes):
                np.testing.assert_allclose(fs.episode(e), expected[name][_episode_rows(episodes, e)], rtol=1e-6)
                assert len(fs.episode(e)) == len(episode_frames)


def _episode_rows(episodes, e):
    start = sum(len(x) for x in episodes[:e])
    return slice(start, start + len(episodes[e]))


def test_extraction_refuses_other_dataset_or_backbone(tmp_path):
    record_tiny(tmp_path / "one.h5", episodes=1)
    record_tiny(tmp_path / "two.h5", episodes=1)
    out = tmp_path / "features.h5"
    extract_features(tmp_path / "one.h5", [tiny_backbone(seed=0)], out)
    with pytest.raises(FeatureCacheError, match="another episode dataset"):
        extract_features(tmp_path / "two.h5", [tiny_backbone(seed=0)], out)
    with pytest.raises(FeatureSetMismatchError, match="fingerprint"):
        extract_features(tmp_path / "one.h5", [tiny_backbone(seed=5)], out)
    with pytest.raises(FeatureCacheError, match="pvrw.episodes"):
        extract_features(out, [tiny_backbone(seed=0)], tmp_path / "other.h5")


# ---------------------------------------------------------------------------------------------------------- CLI


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_cli_record_extract_info(tmp_path):
    tiny_backbone(seed=0)  # registers "fc_tiny"
    data, feats = tmp_path / "d.h5", tmp_path / "f.h5"
    result = invoke(
        "record",
        "--env",
        "PvrwCacheTiny-v0",
        "--episodes",
        2,
        "--resolution",
        16,
        "--out",
        data,
        "--max-episode-steps",
        5,
        "--action-repeat",
        1,
    )
    assert result.exit_code == 0, result.output
    assert "recorded 2 episodes" in result.output
    with EpisodeDataset(data) as ds:
        assert ds.num_episodes == 2 and ds.frame_shape == (3, 16, 16) and ds.num_steps == 10
        n_frames = ds.num_frames
    result = invoke("cache", "info", data)
    assert result.exit_code == 0 and "2 episodes, 10 steps, 12 frames" in result.output, result.output
    result = invoke("extract", "--pvr", "fc_tiny", "--frames", data, "--out", feats, "--batch-size", 5)
    assert result.exit_code == 0, result.output
    assert f"fc_tiny: {n_frames} frames extracted" in result.output
    result = invoke("extract", "--pvr", "fc_tiny", "--frames", data, "--out", feats)
    assert f"fc_tiny: 0 frames extracted, {n_frames} already there" in result.output, result.output
    result = invoke("cache", "info", feats)
    assert result.exit_code == 0 and f"set fc_tiny: {n_frames} rows x (16,) float32" in result.output, result.output

    assert_one_line_error(invoke("extract", "--pvr", "no_such_net", "--frames", data, "--out", feats), "no_such_net")
    assert_one_line_error(
        invoke("extract", "--pvr", "fc_tiny", "--frames", tmp_path / "nope.h5", "--out", feats), "nope.h5"
    )
    assert_one_line_error(invoke("extract", "--pvr", "fc_tiny", "--frames", data, "--out", data), "pvrw.features")
    (tmp_path / "junk.h5").write_bytes(b"junk" * 64)
    assert_one_line_error(invoke("cache", "info", tmp_path / "junk.h5"), "junk.h5", "corrupt")
    assert_one_line_error(invoke("record", "--env", "PvrwCacheTiny-v0", "--policy", "bogus", "--out", data), "bogus")
    assert_one_line_error(invoke("record", "--env", "NoSuchEnv-v9", "--out", tmp_path / "x.h5"), "NoSuchEnv-v9")


def test_cli_record_with_a_trained_sb3_model(tmp_path):
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", gym.make("PvrwCacheTiny-v0"), n_steps=16, batch_size=16, seed=0)
    model.save(tmp_path / "model.zip")
    data = tmp_path / "d.h5"
    result = invoke(
        "record",
        "--env",
        "PvrwCacheTiny-v0",
        "--policy",
        tmp_path / "model.zip",
        "--episodes",
        1,
        "--out",
        data,
        "--max-episode-steps",
        4,
        "--action-repeat",
        1,
    )
    assert result.exit_code == 0, result.output
    with EpisodeDataset(data) as ds:
        episode = ds.episode(0)
    predicted = model.predict(episode["frames"][:-1], deterministic=True)[0]  # frame_stack 1: the frame is the obs
    np.testing.assert_allclose(episode["actions"], np.clip(predicted, -1, 1), atol=1e-6)


def test_cli_record_metaworld_expert(tmp_path):
    data = tmp_path / "d.h5"
    result = invoke(
        "record",
        "--env",
        "metaworld/reach-v3",
        "--policy",
        "expert",
        "--episodes",
        1,
        "--resolution",
        32,
        "--out",
        data,
        "--max-episode-steps",
        3,
        "--render-quality",
        "fast",
    )
    assert result.exit_code == 0, result.output
    with EpisodeDataset(data) as ds:
        episode = ds.episode(0)
        assert ds.attrs["policy"] == "expert" and episode["frames"].shape == (4, 3, 32, 32)
        assert episode["truncated"].tolist() == [False, False, True]
        assert np.abs(episode["actions"]).max() > 0 and episode["frames"].std() > 0


def test_pvr_observation_with_cache_reuses_features_across_runs(tmp_path):
    from pvrw.pvr_wrappers import PVRObservation

    backbone = tiny_backbone(seed=0)
    path = tmp_path / "cache.h5"

    def run_episode():
        env = PVRObservation(TimeLimit(TinyPixelEnv(), 6), backbone, cache=path)
        observations = [env.reset(seed=3)[0]]
        for a in np.linspace(-1, 1, 12).reshape(6, 2):
            observations.append(env.step(a)[0])
        info = env.backbone.cache_info()
        env.backbone.close()
        return np.stack(observations), info

    first, info = run_episode()
    assert backbone.frames_seen == 7 and info["misses"] == 7 and info["hits"] == 0
    again, info = run_episode()  # a re-run (e.g. a repeated evaluation episode) costs no backbone pass
    assert backbone.frames_seen == 7 and info["hits"] == 7 and info["misses"] == 0
    np.testing.assert_array_equal(again, first)
    assert first.shape == (7, 1, 16)


EPISODE_WRITER = """
import sys, numpy as np
from pvrw.feature_cache.recording import EpisodeWriter
writer = EpisodeWriter(sys.argv[1], (3, 16, 16), 2)
for e in range(10**6):
    steps = 5 + e % 4
    frames = np.full((steps + 1, 3, 16, 16), e % 256, np.uint8)
    no = np.zeros(steps, bool)
    n = writer.add_episode(frames, np.full((steps, 2), e, np.float32), np.ones(steps), no, no, no, seed=e)
    print(n, flush=True)
"""


def test_recording_killed_mid_episode_keeps_committed_episodes(tmp_path):
    script, path = tmp_path / "rec.py", tmp_path / "episodes.h5"
    script.write_text(EPISODE_WRITER)
    writer = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    for line in writer.stdout:
        if int(line) >= 30:
            break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    with EpisodeDataset(path) as ds:
        n = ds.num_episodes
        assert n >= 30
        for e in (0, n // 2, n - 1):
            episode = ds.episode(e)
            assert len(episode["actions"]) == 5 + e % 4 and (episode["frames"] == e % 256).all()
            assert (episode["actions"] == e).all()
        assert ds.num_frames == sum(6 + e % 4 for e in range(n))
    result = invoke("cache", "repair", path)
    assert result.exit_code == 0, result.output
    with EpisodeDataset(path) as ds:  # repaired: committed episodes only, nothing half-written left
        assert ds.num_episodes == n and ds._file["frames"].shape[0] == ds.num_frames
