"""Figures: mean +- std over seeds, runs grouped by config, from fake run directories."""

import numpy as np

from pvrw.runs.config import build_config, save_config
from pvrw.runs.layout import RunDir
from pvrw.runs.metrics import MetricsWriter
from pvrw.runs.plotting import group_runs, load_run, mean_std, plot_runs


def fake_run(root, seed, pvr="none", rewards=(0.0, 1.0, 2.0)):
    rd = RunDir(root)
    rd.root.mkdir(parents=True)
    save_config(build_config({"seed": seed, "pvr": pvr, "frames": 30_000}), rd.config)
    with MetricsWriter(rd.metrics) as w:
        for i, r in enumerate(rewards, start=1):
            w.write(kind="eval", frames=10_000 * i, steps=5000 * i, episode=i, reward=r, success=r / 10,
                    success_final=0.0, dormant_ratio=0.5, episodes=10)  # fmt: skip
    return rd.root


def test_mean_std_over_seeds_matches_numpy():
    x = np.array([0.0, 10.0, 20.0])
    a, b = np.array([1.0, 2.0, 3.0]), np.array([3.0, 6.0, 5.0])
    frames, mean, std, count = mean_std([(x, a), (x, b)])
    np.testing.assert_allclose(frames, x)
    np.testing.assert_allclose(mean, np.stack([a, b]).mean(0))
    np.testing.assert_allclose(std, np.stack([a, b]).std(0))
    assert count.tolist() == [2, 2, 2]
    # a shorter seed only contributes inside its own range
    _, mean, _, count = mean_std([(x, a), (x[:2], b[:2])])
    assert count.tolist() == [2, 2, 1] and mean[-1] == a[-1]


def test_plot_from_two_fake_runs_of_two_seeds(tmp_path):
    runs = [
        fake_run(tmp_path / "pix0", 0),
        fake_run(tmp_path / "pix1", 1, rewards=(1.0, 2.0, 4.0)),
        fake_run(tmp_path / "dino0", 0, pvr="dinov2"),
        fake_run(tmp_path / "dino1", 1, pvr="dinov2"),
    ]
    groups = group_runs([load_run(r) for r in runs])
    assert sorted((g.label, len(g.runs)) for g in groups) == [("drm/dinov2@112", 2), ("drm/none@112", 2)]
    out = plot_runs(runs, tmp_path / "fig" / "curves.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
