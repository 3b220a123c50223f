"""Fine-tuning a registered backbone inside DrM (FinetunePolicy): which parameters train, LoRA identity at start,
BatchNorm policy, own learning rate, shrink-and-perturb, save/load, end to end on tiny images."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th

from backbone_helpers import registered_backbones
from drm_sb3_envs import StackedImageEnv, fast
from pvrw.backbones.lora import LoRALinear, add_lora
from pvrw.drm import DrM
from pvrw.drm.finetune import FinetuneExtractor, parse_finetune
from pvrw.pvr_wrappers import create_backbone

pytestmark = pytest.mark.filterwarnings("ignore::pvrw.backbones.registry.RandomWeightsWarning")


@pytest.fixture(scope="module", autouse=True)
def tiny_vit():
    from pvrw.backbones.dinov2 import dinov2

    with registered_backbones({"ft_dinov2": dinov2(depth=2)}):
        yield


def model(backbone: str, finetune: str, side: int = 28, **extra):
    kwargs = dict(backbone=backbone, weights="random", finetune=finetune, **extra.pop("fe", {}))
    return DrM("FinetunePolicy", StackedImageEnv(side=side), seed=0, **fast(features_extractor_kwargs=kwargs, **extra))


def snapshot(module: th.nn.Module) -> dict[str, th.Tensor]:
    return {n: t.detach().clone() for n, t in module.state_dict().items()}


def test_modes_parse_and_refusals():
    assert parse_finetune("last2") == ("last", 2) and parse_finetune("lora:8") == ("lora", 8)
    assert parse_finetune("all") == ("all", 0) and parse_finetune("none") == ("none", 0)
    for bad in ("last0", "lora", "lora:x", "first2", "partial"):
        with pytest.raises(ValueError, match="use 'none', 'all', 'lastN'"):
            parse_finetune(bad)
    space = StackedImageEnv(side=32).observation_space
    with pytest.raises(ValueError, match="LoRA needs a ViT"):
        FinetuneExtractor(space, "resnet18", weights="random", finetune="lora:4")
    with pytest.raises(ValueError, match="has 4 blocks"):
        FinetuneExtractor(space, "resnet18", weights="random", finetune="last5")
    with pytest.raises(ValueError, match="bn='pieg'"):
        FinetuneExtractor(space, "resnet18", weights="random", bn="pieg")


def test_lora_starts_as_the_identity():
    layer = th.nn.Linear(6, 5)
    wrapped = LoRALinear(layer, rank=2)
    x = th.randn(3, 6)
    assert th.equal(wrapped(x), layer(x)) and not wrapped.base.weight.requires_grad
    assert th.equal(wrapped.lora_b, th.zeros(5, 2)) and wrapped.lora_a.abs().sum() > 0
    frozen = create_backbone("ft_dinov2", weights="random", resolution=28)
    frames = th.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 28, 28), dtype=np.uint8))
    expected = frozen(frames)
    agent = model("ft_dinov2", "lora:4")  # after DrM's weight_init pass over the encoder
    encoder = agent.policy.features_extractor
    assert sum(isinstance(m, LoRALinear) for m in encoder.modules()) == 4  # qkv and proj of 2 blocks
    with th.no_grad():
        got = encoder.backbone(frozen.preprocess(frames))
    th.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="LoRA needs a ViT"):
        add_lora(th.nn.Sequential(th.nn.Conv2d(3, 3, 1)), 2)


@pytest.mark.parametrize("backbone, finetune, expect", [
    ("resnet18", "last2", ("layer2.",)),
    ("resnet18", "all", ("",)),
    ("ft_dinov2", "last1", ("blocks.1.", "norm.")),
    ("ft_dinov2", "lora:4", ("lora_",)),
    ("ft_dinov2", "none", ()),
])
def test_only_the_chosen_parameters_change(backbone, finetune, expect):
    agent = model(backbone, finetune, backbone_lr=3e-4)
    encoder = agent.policy.features_extractor
    params = dict(encoder.backbone.named_parameters())
    chosen = {n for n in params if expect and any(e in n for e in expect)}
    assert {n for n, p in params.items() if p.requires_grad} == chosen
    counts = encoder.parameter_counts()
    assert counts["backbone_trainable"] == sum(params[n].numel() for n in chosen)
    before = snapshot(encoder.backbone)
    agent.learn(30)
    after = dict(encoder.backbone.named_parameters())
    changed = {n for n in params if not th.equal(before[n], after[n])}
    assert changed == chosen
    buffers = {n for n, b in encoder.backbone.named_buffers() if not th.equal(before[n], b)}
    assert not buffers  # bn="frozen": running statistics untouched by the updates


def test_bn_update_follows_training_and_backbone_lr_is_its_own():
    agent = model("resnet18", "last2", side=32, fe=dict(bn="update"), backbone_lr=1e-5)
    encoder = agent.policy.features_extractor
    before = snapshot(encoder.backbone)
    agent.learn(30)
    moved = [n for n, b in encoder.backbone.named_buffers() if "running_mean" in n and not th.equal(before[n], b)]
    assert "weights_module.bn1.running_mean" in moved  # frozen layers' statistics update too (PIE-G)
    groups = agent.policy.encoder_optimizer.param_groups
    assert [g.get("lr_scale") for g in groups] == [None, pytest.approx(1e-5 / 1e-4)]
    assert groups[1]["lr"] == groups[0]["lr"]  # the schedule's value; the scale applies inside step()
    encoder.train(True)
    assert all(m.training for m in encoder.backbone.modules() if isinstance(m, th.nn.BatchNorm2d))
    frozen_bn = model("resnet18", "last2", side=32).policy.features_extractor.train(True)
    assert not any(m.training for m in frozen_bn.backbone.modules() if isinstance(m, th.nn.BatchNorm2d))


def test_perturb_leaves_the_backbone_alone():
    agent = model("resnet18", "all", side=32)
    encoder = agent.policy.features_extractor
    before = snapshot(encoder)
    agent.dormant_ratio = 0.3
    agent.perturb()
    after = encoder.state_dict()
    assert all(th.equal(before[n], after[n]) for n in before if n.startswith("backbone."))
    assert not th.equal(before["head.fc.weight"], after["head.fc.weight"])


def test_save_load_round_trips_the_adapters(tmp_path):
    agent = model("ft_dinov2", "lora:4")
    agent.learn(30)
    lora = {n: t for n, t in agent.policy.state_dict().items() if "lora_" in n}
    assert lora and any(t.abs().sum() > 0 for n, t in lora.items() if "lora_b" in n)
    agent.save(tmp_path / "agent.zip")
    loaded = DrM.load(tmp_path / "agent.zip")
    state = loaded.policy.state_dict()
    assert all(th.equal(state[n], t) for n, t in lora.items())
    obs = np.random.default_rng(1).integers(0, 256, (2, 9, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], agent.predict(obs, deterministic=True)[0],
                               rtol=1e-5, atol=1e-6)
    assert loaded.policy.backbone_lr == agent.policy.backbone_lr
