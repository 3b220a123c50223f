"""Results statistics: IQM, stratified bootstrap CIs, Spearman; `pvrw plot --stat iqm --per-seed` and `pvrw table`
on a local sweep root of tiny DrM and DrQ-v2 runs."""

import csv
import io
import json

import numpy as np
import pytest
import scipy.stats
import test_runs_tinyenv  # noqa: F401  (registers the tiny envs)
from click.testing import CliRunner
from matplotlib.image import imread

from pvrw.cli import main
from pvrw.drm import DrM, trainable_parameter_counts
from pvrw.runs.config import build_config, load_config, save_config
from pvrw.runs.layout import RunDir
from pvrw.runs.metrics import MetricsWriter
from pvrw.runs.plotting import group_runs, load_run
from pvrw.runs.statistics import aggregate_curves, iqm, spearman, stratified_bootstrap

ENV = "test_runs_tinyenv:TinyState-v0"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# --- statistics ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 5, 7, 10])
def test_iqm_is_scipys_25_percent_trimmed_mean(n):
    scores = np.random.default_rng(n).normal(size=n)
    assert iqm(scores) == pytest.approx(scipy.stats.trim_mean(scores, 0.25))
    assert iqm(np.array([0.0, 1.0, 2.0, 3.0, 100.0])) == pytest.approx(2.0)  # the middle 3 of 5


def test_bootstrap_is_stratified_by_task_and_reproducible():
    # task 0 always scores 0 and task 1 always 1: every stratified re-draw keeps 3 runs of each, so the pooled mean
    # is exactly 0.5 in every re-draw (an unstratified re-draw of the 6 pooled scores would vary)
    scores = np.array([[0.0, 1.0]] * 3)
    interval = stratified_bootstrap(scores, statistic=lambda x, axis: x.mean(axis=axis), reps=2000)
    assert (interval.value, interval.low, interval.high) == (0.5, 0.5, 0.5)
    runs = np.array([0.1, 0.4, 0.5, 0.7, 0.9])
    first, again = stratified_bootstrap(runs, reps=5000, seed=3), stratified_bootstrap(runs, reps=5000, seed=3)
    assert first == again and first.low < first.value < first.high
    assert first.value == pytest.approx(np.mean([0.4, 0.5, 0.7]))
    # 5 runs re-drawn with replacement: the IQM of a re-draw stays within the runs' range
    assert 0.1 <= first.low and first.high <= 0.9


def test_bootstrap_percentiles_match_the_exact_distribution():
    # 4 runs: 256 equally likely re-draws, whose IQM (the middle 2) has an exact distribution; its 2.5 and 97.5
    # percentiles fall inside atoms of probability > 1 %, which 50,000 re-draws find exactly
    runs = np.array([0.0, 1.0, 3.0, 7.0])
    draws = np.array(np.meshgrid(runs, runs, runs, runs)).reshape(4, -1).T
    exact = np.percentile(iqm(draws, axis=-1), [2.5, 97.5], method="inverted_cdf")
    interval = stratified_bootstrap(runs)
    assert [interval.low, interval.high] == pytest.approx(exact) and interval.value == pytest.approx(2.0)


def test_iqm_curves_and_spearman():
    x = np.array([0.0, 10.0])
    curves = [(x, np.array([v, 2 * v])) for v in (0.0, 1.0, 2.0, 3.0, 50.0)]
    frames, center, low, high, count = aggregate_curves(curves, "iqm", reps=2000)
    assert center.tolist() == pytest.approx([2.0, 4.0]) and count.tolist() == [5, 5]
    assert bool(np.all(low <= center)) and bool(np.all(center <= high))
    _, mean, low, high, _ = aggregate_curves(curves, "mean-std")
    assert mean[0] == pytest.approx(11.2) and high[0] - mean[0] == pytest.approx(np.std([0, 1, 2, 3, 50]))
    a, b = np.array([0.1, 0.3, 0.3, 0.9, 0.5]), np.array([1.0, 0.0, 0.5, 0.0, 0.2])
    rho, p = spearman(a, b)
    expected = scipy.stats.spearmanr(a, b)
    assert rho == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    assert np.isnan(spearman(a, np.ones(5))[0])


def test_groups_of_one_variant_are_labelled_by_the_settings_they_differ_in(tmp_path):
    runs = []
    for name, seed, extra in (("base", 0, {}), ("redo", 0, {"redo_interval": 1000}),
                              ("redo_norm", 1, {"redo_interval": 500, "head_norm": True})):  # fmt: skip
        rd = RunDir(tmp_path / name)
        rd.root.mkdir()
        save_config(build_config({"seed": seed, "frames": 1000, **extra}), rd.config)
        with MetricsWriter(rd.metrics) as writer:
            writer.write(kind="eval", frames=1000, steps=500, episode=1, reward=1.0, episodes=1)
        runs.append(load_run(rd.root))
    labels = sorted(g.label for g in group_runs(runs))
    assert labels == ["drm/none@112 (defaults)", "drm/none@112 head_norm=True, redo_interval=500",
                      "drm/none@112 redo_interval=1000"]  # fmt: skip


def test_the_dormant_ratio_before_the_first_update_is_left_out(tmp_path):
    from pvrw.runs.plotting import _curve
    from pvrw.runs.table import summarise_run

    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    save_config(build_config({"frames": 1000, "learning_starts": 50}), rd.config)
    with MetricsWriter(rd.metrics) as writer:  # DrM reports its initial 1.0 until it updates
        for steps, ratio in ((50, 1.0), (100, 0.3), (150, 0.2)):
            writer.write(kind="eval", frames=2 * steps, steps=steps, episode=1, reward=1.0, success=0.5,
                         dormant_ratio=ratio, episodes=1)  # fmt: skip
    run = load_run(rd.root)
    assert _curve(run, "dormant_ratio")[1].tolist() == [0.3, 0.2] and len(_curve(run, "reward")[0]) == 3
    summary = summarise_run(run, threshold=0.5)
    assert (summary.peak_dormant, summary.final_dormant, summary.frames_to_threshold) == (0.3, 0.2, 100)
    assert summary.parameters is None  # no checkpoint


# --- on a local sweep root -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    """ROOT/<task>/{drm,drqv2}_none_36/seed_{0,1,2}: tiny runs of DrM and of the DrQ-v2 baseline (--set variant)."""
    root = tmp_path_factory.mktemp("sweep")
    base = ["sweep", "--tasks", ENV, "--pvr", "none", "--resolution", "36", "--seeds", "3", "--frames", "120",
            "--root", root, "--no-progress", "--set", "eval_every=60", "--set", "eval_episodes=2", "--set",
            "video=false", "--set", "learning_starts=30", "--set", "batch_size=16", "--set", "buffer_size=300",
            "--set", "threads=1", "--set", "policy_kwargs={hidden_dim: 32, feature_dim: 16}"]  # fmt: skip
    for extra in ([], ["--set", "variant=drqv2"]):
        result = invoke(*base, *extra)
        assert result.exit_code == 0, result.output
    return root


def test_drqv2_runs_through_the_run_config(sweep_root):
    runs = sorted(sweep_root.rglob("drqv2_none_36/seed_*"))
    assert len(runs) == 3
    assert load_config(runs[0] / "config.yaml").algo_kwargs["variant"] == "drqv2"
    checkpoint = next(runs[0].glob("checkpoints/*/model.zip"))
    model = DrM.load(checkpoint)
    assert model.variant == "drqv2" and model.value_net is None and model.perturbations == []


def test_table_markdown_csv_json_and_the_correlation(sweep_root):
    result = invoke("table", sweep_root, "--reps", 2000)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rows = [line for line in lines if line.startswith("| test_runs_tinyenv")]
    assert len(rows) == 2 and "drm/none@36" in rows[0] and "drqv2/none@36" in rows[1]
    assert lines[-2].startswith("Spearman rho, final dormant ratio vs final any-step success: ")
    assert lines[-2].endswith("over 6 runs") or "not defined over 6 runs" in lines[-2]  # constant success: undefined
    assert lines[-1].startswith("Spearman rho, final dormant ratio vs final reward: ") and "over 6 runs" in lines[-1]

    result = invoke("table", sweep_root, "--format", "csv", "--reps", 2000, "--success", "final-step")
    records = list(csv.DictReader(io.StringIO(result.output.split("\nSpearman")[0])))
    assert result.output.count("Spearman") == 2
    assert [r["config"] for r in records] == ["drm/none@36", "drqv2/none@36"]
    assert all(r["seeds"] == "0,1,2" for r in records)
    drm_zip = next(sweep_root.rglob("drm_none_36/seed_0/checkpoints/*/model.zip"))
    drqv2_zip = next(sweep_root.rglob("drqv2_none_36/seed_0/checkpoints/*/model.zip"))
    for record, path in zip(records, (drm_zip, drqv2_zip)):
        assert record["trainable params"] == f"{trainable_parameter_counts(DrM.load(path))['total']:,}"
        assert record["replay GB"] != "–" and record["updates/s"] != "–" and " ± " in record["final dormant"]
        assert record["success IQM [95% CI]"].count("[") == 1
    assert int(records[0]["trainable params"].replace(",", "")) > int(records[1]["trainable params"].replace(",", ""))

    out = sweep_root / "table.json"
    assert invoke("table", sweep_root, "--format", "json", "--reps", 2000, "-o", out).exit_code == 0
    assert [r["config"] for r in json.loads(out.read_text())] == ["drm/none@36", "drqv2/none@36"]


def test_plot_iqm_per_seed(sweep_root, tmp_path):
    plain, per_seed = tmp_path / "plain.png", tmp_path / "per_seed.png"
    assert invoke("plot", sweep_root, "--stat", "iqm", "--reps", 500, "-o", plain).exit_code == 0
    result = invoke("plot", sweep_root, "--stat", "iqm", "--per-seed", "--success", "final-step", "--reps", 500,
                    "-o", per_seed)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "6 runs, 2 lines" in result.output
    # the per-seed panels (2 configurations x 3 seeds) are added below the aggregate panels
    assert imread(per_seed).shape[0] > 2 * imread(plain).shape[0]


def test_train_variant_drqv2_from_the_command_line(tmp_path):
    result = invoke("train", "--env", ENV, "--variant", "drqv2", "--frames", 60, "--eval-every", 0,
                    "--eval-episodes", 1, "--no-video", "--threads", 1, "--learning-starts", 30, "--batch-size", 16,
                    "--buffer-size", 300, "--set", "policy_kwargs={hidden_dim: 32, feature_dim: 16}", "--no-progress",
                    "--out", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "run" / "config.yaml").variant == "drqv2/none@112"
