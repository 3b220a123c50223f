"""`pvrw train --tokens/--layers/--finetune`, `pvrw sweep` axes over them, `pvrw params` and `pvrw backbones` rows,
on a tiny pixel env and a 1-block random ViT registered in this process (CliRunner)."""

from __future__ import annotations

import json

import pytest
import test_runs_tinyenv  # noqa: F401  (registers the tiny envs)
import yaml
from backbone_helpers import registered_backbones
from click.testing import CliRunner

from pvrw.cli import main
from pvrw.drm import DrM
from pvrw.runs.layout import RunStatus

pytestmark = pytest.mark.filterwarnings("ignore::pvrw.backbones.registry.RandomWeightsWarning")

TINY = [
    "--env", "test_runs_tinyenv:TinyPixels-v0", "--resolution", "28", "--weights", "random", "--threads", "1",
    "--learning-starts", "20", "--batch-size", "8", "--buffer-size", "200", "--frames", "40", "--eval-every", "0",
    "--eval-episodes", "1", "--no-video", "--no-progress", "--set", "env_kwargs={size: 28}",
    "--set", "policy_kwargs={hidden_dim: 16, feature_dim: 8}",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def cli_vit():
    from pvrw.backbones.dinov2 import dinov2

    with registered_backbones({"cli_vit": dinov2(depth=1)}):
        yield


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def trained(run_dir):
    from pvrw.runs.layout import RunDir

    assert RunStatus.read(RunDir(run_dir)).finished
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    model = DrM.load(sorted(run_dir.rglob("*.zip"))[-1])
    return config, model


@pytest.mark.parametrize("args, policy, obs_shape", [
    (["--tokens", "mean", "--layers", "-1"], "DrMPolicy", (2, 768)),
    (["--tokens", "cls+mean"], "DrMPolicy", (2, 1536)),
    (["--tokens", "patches"], "PatchPolicy", (2, 768, 2, 2)),
    (["--finetune", "lora:2", "--backbone-lr", "1e-5"], "FinetunePolicy", (6, 28, 28)),
    (["--finetune", "last1", "--tokens", "mean", "--bn", "update"], "FinetunePolicy", (6, 28, 28)),
])
def test_train_with_readout_and_finetune_options(tmp_path, args, policy, obs_shape):
    out = tmp_path / "run"
    result = invoke("train", "--pvr", "cli_vit", *TINY, *args, "--out", str(out))
    assert result.exit_code == 0, result.output
    config, model = trained(out)
    given = dict(zip(args[::2], args[1::2]))
    expected = {k.removeprefix("--").replace("-", "_"): v for k, v in given.items()}
    expected = {k: float(v) if k == "backbone_lr" else v for k, v in expected.items()}
    assert config["pvr_kwargs"] == expected
    assert type(model.policy).__name__ == policy and model.observation_space.shape == obs_shape
    if policy == "FinetunePolicy":
        extractor = model.policy.features_extractor
        assert extractor.finetune == expected["finetune"] and extractor.bn == expected.get("bn", "frozen")
        assert extractor.backbone_name == "cli_vit"
        assert model.policy.backbone_lr == expected.get("backbone_lr")


def test_bad_readout_or_mode_is_one_line(tmp_path):
    for args, message in [
        (["--tokens", "cls+registers"], "pvr_kwargs: cli_vit: tokens='cls+registers' is not one of"),
        (["--layers", "-3"], "this ViT has 1 blocks"),
        (["--finetune", "lora"], "pvr_kwargs.finetune='lora': use 'none', 'all', 'lastN'"),
    ]:
        result = CliRunner().invoke(main, ["train", "--pvr", "cli_vit", *TINY, *args, "--out", str(tmp_path / "r")])
        assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_sweep_axes_over_readouts_and_finetuning(tmp_path):
    result = invoke("sweep", "--tasks", "test_runs_tinyenv:TinyPixels-v0", "--pvr", "none,cli_vit", "--resolution",
                    "28", "--seeds", "1", "--tokens", "cls,mean", "--finetune", "none,last1", "--axis",
                    "batch_size=8;16", "--root", str(tmp_path), "--dry-run")
    assert result.exit_code == 0, result.output
    dirs = [line.split()[-1] for line in result.output.splitlines() if "seed_0" in line]
    assert len(dirs) == 2 + 2 * 2 * 2 == len(set(dirs))  # pixels: batch-size axis only
    assert any(d.endswith("drm_cli_vit_28_tokens-mean_finetune-last1_batch_size-16/seed_0") for d in dirs)
    assert any(d.endswith("drm_none_28_batch_size-8/seed_0") for d in dirs)
    result = CliRunner().invoke(main, ["sweep", "--pvr", "dinov2", "--tokens", "mean", "--set",
                                       "pvr_kwargs.tokens=cls", "--dry-run", "--root", str(tmp_path)])
    assert result.exit_code != 0 and "a grid key" in result.output


def test_params_and_backbones_list_them():
    rows = json.loads(invoke("params", "--resolution", "112", "--tokens", "patches", "--json").output)
    dino = next(r for r in rows if r["pvr"] == "dinov2")
    assert dino["observation_shape"] == [3, 768, 8, 8] and dino["policy"] == "PatchPolicy"
    assert dino["params"]["encoder"] == 8_612_928 and dino["replay_bytes_per_transition"] > 768 * 64 * 4  # a map/frame
    rows = json.loads(invoke("params", "--resolution", "224", "--finetune", "lora:8", "--json").output)
    assert "resnet18" not in {r["pvr"] for r in rows}  # LoRA needs attention projections
    dino = next(r for r in rows if r["pvr"] == "dinov2")
    assert dino["backbone_trainable"] == 12 * 8 * (768 + 3 * 768 + 768 + 768)  # A and B of qkv and proj, 12 blocks
    assert dino["policy"] == "FinetunePolicy" and dino["observation_shape"] == [9, 224, 224]
    pixels = next(r for r in rows if r["pvr"] == "none")
    assert dino["replay_bytes_per_transition"] == pixels["replay_bytes_per_transition"]  # images in the replay
    rows = json.loads(invoke("params", "--resolution", "112", "--layers", "-1,-2,-3,-4", "--json").output)
    assert next(r for r in rows if r["pvr"] == "vc1")["observation_shape"] == [3, 4 * 768]
    text = invoke("params", "--resolution", "112", "--finetune", "last2").output
    assert "bb trainable" in text and "14,180,352" in text
    listing = invoke("backbones", "dinov2").output
    assert "readout  tokens=cls|mean|cls+mean|patches" in listing and "lora:R" in listing
