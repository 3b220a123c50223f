"""Backbone registry, weight resolution and strict loading, on random-initialised real architectures.

Checkpoint files are written by the tests in each upstream format from an independent source model (torchvision,
transformers, timm) and must load strictly and give that model's features.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backbone_helpers import forget_backbones, registered_backbones

from pvrw.backbones.registry import (
    _REGISTRY,
    BackboneCfg,
    RandomWeightsWarning,
    UnknownBackboneError,
    weights_status,
)
from pvrw.backbones.weights import WeightsFormatError, WeightsNotFoundError
from pvrw.pvr_wrappers import create_backbone, get_backbone_cfg, list_backbones, register_backbone

BUILTINS = ["dinov2", "dinov2_reg", "resnet18", "vc1"]
SMALL = {"resnet18": 32, "dinov2": 28, "dinov2_reg": 28, "vc1": 32}  # smallest sides with a 2x2 patch grid
IMAGENET = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))



def imagenet_norm(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - IMAGENET[0]) / IMAGENET[1]


@pytest.fixture(autouse=True)
def isolated_weight_dirs(tmp_path, monkeypatch):
    """No real cache is ever searched: PVRW_WEIGHTS_DIR, HF cache and torch hub point into tmp_path."""
    monkeypatch.setenv("PVRW_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "weights").mkdir()


_RANDOM: dict[str, object] = {}


def random_backbone(name: str):
    """One random-weight backbone per name for the session (a ViT-B init costs seconds on 2 shared cores)."""
    if name not in _RANDOM:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            _RANDOM[name] = create_backbone(name, weights="random", resolution=SMALL.get(name, 32))
    return _RANDOM[name]


def frames(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, side, side), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------------- registry


def test_list_filter_and_unknown_name():
    assert set(BUILTINS) <= set(list_backbones())
    assert list_backbones("dino*") == ["dinov2", "dinov2_reg"]
    assert list_backbones("reg") == ["dinov2_reg"]
    with pytest.raises(UnknownBackboneError, match="Known backbones: .*dinov2.*resnet18.*vc1"):
        create_backbone("dinov3", weights="random")


@pytest.mark.parametrize("name, side, expected", [
    ("resnet18", 84, (128, 11, 11)), ("resnet18", 112, (128, 14, 14)), ("resnet18", 224, (128, 28, 28)),
    ("dinov2", 112, (768,)), ("dinov2", 224, (768,)), ("dinov2_reg", 112, (3840,)), ("dinov2_reg", 224, (3840,)),
    ("vc1", 112, (768,)), ("vc1", 224, (768,))])
def test_output_shape_per_resolution(name, side, expected):
    cfg = get_backbone_cfg(name)
    assert cfg.output_shape(side, **cfg.resolve_options()) == expected
    assert side in cfg.study_resolutions or name == "resnet18"


def test_resolution_and_option_errors():
    with pytest.raises(ValueError, match="multiple of 14"):
        create_backbone("dinov2", weights="random", resolution=32)
    with pytest.raises(ValueError, match="multiple of 16"):
        create_backbone("vc1", weights="random", resolution=28)
    with pytest.raises(ValueError, match=r"at 4x4: the side must be at least 8 \(e\.g\."):  # no "a multiple of 1"
        create_backbone("resnet18", weights="random", resolution=4)
    with pytest.raises(ValueError, match="no option.*tokens=.*cls\\+registers"):
        create_backbone("dinov2_reg", weights="random", resolution=28, token="cls")
    with pytest.raises(ValueError, match="not one of"):
        create_backbone("dinov2_reg", weights="random", resolution=28, tokens="patch")


@pytest.mark.parametrize("name", list_backbones())
def test_random_backbone_contract(name):
    """Every registered entry: frozen module, contract attributes, shapes, HWC == CHW, distinct frames differ."""
    if name not in SMALL:
        pytest.skip("registered by another test")
    bb = random_backbone(name)
    side = SMALL[name]
    assert bb.name == name and bb.resolution == side and bb.fingerprint == "random"
    assert bb.output_shape == bb.cfg.output_shape(side, **bb.options)
    assert "RANDOM WEIGHTS" in repr(bb).split("\n")[0]
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training and not any(m.training for m in bb.modules())
    x = frames(3, side)
    out = bb.embed(x)
    assert out.shape == (3, *bb.output_shape) and out.dtype == np.float32 and np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])
    np.testing.assert_allclose(bb.embed(x.transpose(0, 2, 3, 1)), out, rtol=1e-5, atol=1e-5)
    forward = bb(torch.from_numpy(x))
    assert not forward.requires_grad
    np.testing.assert_allclose(forward.numpy(), out, rtol=1e-4, atol=1e-4)
    assert f"{side}x{side}" in bb.preprocessing and bb.cfg.normalisation in bb.preprocessing
    with pytest.raises(TypeError, match="uint8 RGB frames.*scaling and normalisation happen inside the backbone"):
        bb.embed(x.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(N,3,H,W\)"):
        bb.embed(x[:, :2])
    with pytest.raises(ValueError, match=r"For one frame pass frames\[None\]"):
        bb.embed(x[0])


def test_random_weights_warn_loudly():
    with pytest.warns(RandomWeightsWarning, match="RANDOM weights"):
        create_backbone("resnet18", weights="random", resolution=16)


def test_frames_of_other_sizes_are_resized():
    bb = random_backbone("resnet18")
    x = frames(2, 48)
    resized = torch.nn.functional.interpolate(torch.from_numpy(x).float(), size=(32, 32), mode="bicubic",
                                              antialias=True).clamp(0, 255)
    expected = bb.model(resized / 255 - 0.5).numpy()
    np.testing.assert_allclose(bb.embed(x), expected, rtol=1e-5, atol=1e-5)


def test_dtype_bfloat16_close_to_float32():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        bf = create_backbone("resnet18", weights="random", resolution=32, dtype=torch.bfloat16)
    x = frames(2, 32)
    ref = random_backbone("resnet18").embed(x)
    out = bf.embed(x)
    assert out.dtype == np.float32 and "dtype=bfloat16" in bf.preprocessing
    assert np.abs(out - ref).mean() < 0.05 * np.abs(ref).mean()


def test_dtype_by_name_and_non_float_dtype_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        by_name = create_backbone("resnet18", weights="random", resolution=32, dtype="bfloat16")
        assert by_name.dtype == torch.bfloat16 and "dtype=bfloat16" in by_name.preprocessing
        for bad in (torch.int8, "float17"):
            with pytest.raises(ValueError, match=r"not a floating-point torch dtype.*bfloat16"):
                create_backbone("resnet18", weights="random", resolution=32, dtype=bad)


def test_bn_mode_pieg_follows_train():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        bb = create_backbone("resnet18", weights="random", resolution=32, bn_mode="pieg")
    bn = bb.model.weights_module.bn1
    before = bn.running_mean.clone()
    bb.train()
    assert bn.training
    bb(torch.from_numpy(frames(4, 32)))
    assert not torch.equal(before, bn.running_mean)  # PIE-G: batch statistics, running stats updated
    bb.eval()
    assert not bn.training


# -------------------------------------------------------------------------------- upstream formats, strictly
# The ViT format tests use the built-in entries' own cfg functions at depth 2 ("shallow" twins registered below):
# the same key conversion, pos-embed resampling and strict loading code as ViT-B/12, at a sixth of the file size.
DEPTH = 2


@pytest.fixture(scope="module")
def shallow_twins():
    from pvrw.backbones.dinov2 import dinov2, dinov2_reg
    from pvrw.backbones.vc1 import vc1

    entries = {"s_dinov2": dinov2, "s_dinov2_reg": dinov2_reg, "s_vc1": vc1}
    with registered_backbones({name: entry(depth=DEPTH) for name, entry in entries.items()}):
        yield


@pytest.fixture(scope="module")
def tv_resnet():
    import torchvision

    torch.manual_seed(3)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def pieg_trunk(model, x):
    trunk = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2)
    with torch.no_grad():
        return trunk(x.float() / 255.0 - 0.5)


@pytest.mark.parametrize("filename", ["resnet18-f37072fd.pth", "model.safetensors"])
def test_resnet18_torchvision_and_timm_files(tv_resnet, tmp_path, filename):
    path = tmp_path / filename
    if filename.endswith(".pth"):
        torch.save(tv_resnet.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in tv_resnet.state_dict().items()}, str(path))
    bb = create_backbone("resnet18", weights=path, resolution=32)
    x = torch.from_numpy(frames(2, 32))
    torch.testing.assert_close(bb(x), pieg_trunk(tv_resnet, x), rtol=1e-5, atol=1e-5)
    assert bb.fingerprint == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert not hasattr(bb.model.weights_module.layer3, "0")  # layer3/4/fc dropped after the strict load


@pytest.fixture(scope="module")
def hf_dinov2(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    model = Dinov2Model(Dinov2Config(image_size=518, num_hidden_layers=DEPTH)).eval()  # facebook/dinov2-base, shallow
    folder = tmp_path_factory.mktemp("hf") / "dinov2-base"
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def hf_dinov2_reg(tmp_path_factory):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(2)
    config = Dinov2WithRegistersConfig(image_size=518, patch_size=14, num_hidden_layers=DEPTH)
    model = Dinov2WithRegistersModel(config).eval()
    folder = tmp_path_factory.mktemp("hf") / "dinov2-with-registers-base"
    model.save_pretrained(folder)
    return model, folder


def test_dinov2_transformers_folder(shallow_twins, hf_dinov2, tmp_path):
    model, folder = hf_dinov2
    x = torch.from_numpy(frames(2, 28))
    with torch.no_grad():
        ref = model(pixel_values=imagenet_norm(x)).pooler_output
    bb = create_backbone("s_dinov2", weights=folder, resolution=28, pos_embed_interp="transformers")
    torch.testing.assert_close(bb(x), ref, rtol=1e-4, atol=1e-4)
    # the default (Meta's original rule) resamples the 37x37 table differently: at a 2x2 grid it must show
    meta_rule = create_backbone("s_dinov2", weights=folder, resolution=28)
    assert not torch.allclose(meta_rule(x), ref, atol=1e-3)
    # transformers v5 key names (q_proj/k_proj/v_proj/o_proj) load the same
    new_names = tmp_path / "v5"
    new_names.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(new_names / "model.safetensors"))
    shutil.copy(folder / "config.json", new_names / "config.json")
    assert any("q_proj" in k for k in model.state_dict())
    bb5 = create_backbone("s_dinov2", weights=new_names, resolution=28, pos_embed_interp="transformers")
    torch.testing.assert_close(bb5(x), ref, rtol=1e-4, atol=1e-4)


def test_dinov2_meta_and_timm_files_match_timm_loader(shallow_twins, hf_dinov2, tmp_path):
    """Meta-format .pth -> same features as timm's own loader (its checkpoint_filter_fn, timm resampling rule)."""
    import timm
    from safetensors.torch import load_file

    from pvrw.backbones.dinov2 import transformers_to_meta

    _, folder = hf_dinov2
    meta = transformers_to_meta(load_file(str(folder / "model.safetensors")))
    assert "mask_token" in meta and meta["pos_embed"].shape == (1, 1370, 768)
    path = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save(meta, path)
    ref_model = timm.create_model("vit_base_patch14_dinov2", pretrained=True, img_size=28, num_classes=0, depth=DEPTH,
                                  pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.from_numpy(frames(2, 28))
    with torch.no_grad():
        ref = ref_model(imagenet_norm(x))
    bb = create_backbone("s_dinov2", weights=path, resolution=28, pos_embed_interp="timm")
    torch.testing.assert_close(bb(x), ref, rtol=1e-4, atol=1e-4)
    # a timm-format safetensors of a model at this resolution loads into the same features
    timm_file = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in ref_model.state_dict().items()}, str(timm_file))
    torch.testing.assert_close(create_backbone("s_dinov2", weights=timm_file, resolution=28)(x), ref,
                               rtol=1e-4, atol=1e-4)


def test_dinov2_reg_transformers_and_meta(shallow_twins, hf_dinov2_reg, tmp_path):
    import timm
    from safetensors.torch import load_file

    from pvrw.backbones.dinov2 import transformers_to_meta

    model, folder = hf_dinov2_reg
    x = torch.from_numpy(frames(2, 28))
    with torch.no_grad():
        tokens = model(pixel_values=imagenet_norm(x)).last_hidden_state
    bb = create_backbone("s_dinov2_reg", weights=folder, resolution=28)
    assert bb.output_shape == (3840,)
    torch.testing.assert_close(bb(x), tokens[:, :5].flatten(1), rtol=1e-4, atol=1e-4)
    cls_only = create_backbone("s_dinov2_reg", weights=folder, resolution=28, tokens="cls")
    torch.testing.assert_close(cls_only(x), tokens[:, 0], rtol=1e-4, atol=1e-4)

    meta = transformers_to_meta(load_file(str(folder / "model.safetensors")))
    assert meta["register_tokens"].shape == (1, 4, 768)
    path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(meta, path)
    ref_model = timm.create_model("vit_base_patch14_reg4_dinov2", pretrained=True, img_size=28, num_classes=0,
                                  depth=DEPTH, pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        ref = ref_model.forward_features(imagenet_norm(x))[:, :5].flatten(1)
    torch.testing.assert_close(create_backbone("s_dinov2_reg", weights=path, resolution=28)(x), ref,
                               rtol=1e-4, atol=1e-4)
    # a registers file is not a no-registers DINOv2 (and vice versa): refused, nothing half-loaded
    with pytest.raises(WeightsFormatError, match="reg_token"):
        create_backbone("s_dinov2", weights=path, resolution=28)


def test_vc1_mae_checkpoint(shallow_twins, tmp_path):
    """VC-1's {'model': encoder + mask_token + decoder_*} file: decoder dropped, encoder strict, same CLS."""
    import timm

    torch.manual_seed(4)
    source = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, num_classes=0, depth=DEPTH).eval()
    full = dict(source.state_dict())
    full["mask_token"] = torch.zeros(1, 1, 512)
    full["decoder_embed.weight"] = torch.randn(512, 768)
    full["decoder_blocks.0.norm1.weight"] = torch.ones(512)
    path = tmp_path / "vc1_vitb.pth"
    torch.save({"model": full}, path)
    x = torch.from_numpy(frames(2, 32))
    with torch.no_grad():
        ref = source.forward_features(imagenet_norm(x))[:, 0]
    bb = create_backbone("s_vc1", weights=path, resolution=32)
    torch.testing.assert_close(bb(x), ref, rtol=1e-4, atol=1e-4)
    # a flat encoder dict that kept MAE's mask_token (no wrapper, no decoder) is VC-1 too, not a DINOv2 file
    flat = {k: v for k, v in full.items() if not k.startswith("decoder")}
    torch.save(flat, tmp_path / "flat.pth")
    torch.testing.assert_close(create_backbone("s_vc1", weights=tmp_path / "flat.pth", resolution=32)(x), ref,
                               rtol=1e-4, atol=1e-4)
    # an encoder key missing -> refused with the key named
    del full["blocks.1.mlp.fc1.bias"]
    torch.save({"model": full}, path)
    with pytest.raises(WeightsFormatError, match="missing keys: blocks.1.mlp.fc1.bias"):
        create_backbone("s_vc1", weights=path, resolution=32)


def test_wrong_files_refused(tv_resnet, tmp_path):
    resnet_file = tmp_path / "resnet.pth"
    torch.save(tv_resnet.state_dict(), resnet_file)
    with pytest.raises(WeightsFormatError, match="torchvision_resnet"):
        create_backbone("dinov2", weights=resnet_file, resolution=28)
    partial = dict(tv_resnet.state_dict())
    partial.pop("layer4.1.bn2.weight")  # even an unused layer: the file is not a complete ResNet18
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(WeightsFormatError, match="missing keys: layer4.1.bn2.weight"):
        create_backbone("resnet18", weights=tmp_path / "partial.pth", resolution=32)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsFormatError, match="Could not read .*damaged or not a weight file"):
        create_backbone("resnet18", weights=tmp_path / "junk.pth", resolution=32)


# ------------------------------------------------------------------------------------ offline weight lookup


def test_missing_weights_error_lists_everything(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("vc1", resolution=112)
    text = str(info.value)
    for needle in ["vc1_vitb.pth", str(tmp_path / "weights"), str(tmp_path / "hf"), "facebook/vc1-base",
                   "https://dl.fbaipublicfiles.com/eai-vc/vc1_vitb.pth", "448 MB", "CC-BY-NC-4.0",
                   "pvrw download vc1", "PVRW_WEIGHTS_DIR", str(tmp_path / "torch" / "hub" / "checkpoints")]:
        assert needle in text, needle
    with pytest.raises(WeightsNotFoundError, match="at the given path"):
        create_backbone("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(TypeError, match="weights=True: pass None .*'random'.*path"):
        create_backbone("resnet18", weights=True)
    with pytest.raises(ValueError, match="weights='Random' is not a path.*weights='random'"):
        create_backbone("resnet18", weights="Random")
    assert weights_status("dinov2")[0] is None and "Apache-2.0" in weights_status("dinov2")[1]


def test_lookup_weights_dir_hf_cache_and_torch_hub(tv_resnet, hf_dinov2, tmp_path):
    sd = tv_resnet.state_dict()
    # torch hub cache
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(sd, hub / "resnet18-f37072fd.pth")
    assert create_backbone("resnet18", resolution=32).weights_path == hub / "resnet18-f37072fd.pth"
    # HF cache (timm repo) wins over the torch hub cache
    snap = tmp_path / "hf" / "models--timm--resnet18.tv_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snap / "model.safetensors"))
    assert create_backbone("resnet18", resolution=32).weights_path == snap / "model.safetensors"
    # $PVRW_WEIGHTS_DIR wins over both
    torch.save(sd, tmp_path / "weights" / "resnet18-f37072fd.pth")
    bb = create_backbone("resnet18", resolution=32)
    assert bb.weights_path == tmp_path / "weights" / "resnet18-f37072fd.pth"
    x = torch.from_numpy(frames(1, 32))
    torch.testing.assert_close(bb(x), pieg_trunk(tv_resnet, x), rtol=1e-5, atol=1e-5)
    # a transformers folder in the HF cache (facebook/dinov2-base) resolves to the snapshot folder
    _, folder = hf_dinov2
    snap = tmp_path / "hf" / "models--facebook--dinov2-base" / "snapshots" / "def456"
    shutil.copytree(folder, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("def456")
    assert weights_status("dinov2")[0] == snap
    # ... and a folder under $PVRW_WEIGHTS_DIR/<name>/ wins
    shutil.copytree(folder, tmp_path / "weights" / "dinov2")
    assert weights_status("dinov2")[0] == tmp_path / "weights" / "dinov2"


def test_download_without_network_says_so():
    from pvrw.backbones.weights import download_weights

    with pytest.raises(WeightsNotFoundError, match="network"):
        download_weights("dinov2", get_backbone_cfg("dinov2").weights.__class__(
            hf_files=get_backbone_cfg("dinov2").weights.hf_files))


# ------------------------------------------------------------------------------------------ user registration


@pytest.fixture
def scratch_registry():
    before = set(_REGISTRY)
    yield
    forget_backbones(set(_REGISTRY) - before)


def test_register_user_module_and_timm_model(scratch_registry, tmp_path):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    torch.manual_seed(0)
    tiny = Tiny()
    register_backbone("tiny_conv", module=tiny, output_shape=(8,))
    assert "tiny_conv" in list_backbones()
    bb = create_backbone("tiny_conv", resolution=16)
    assert bb.fingerprint.startswith("module-sha256:") and bb.output_shape == (8,)
    x = frames(2, 16)
    with torch.no_grad():
        ref = tiny(imagenet_norm(torch.from_numpy(x)))
    np.testing.assert_allclose(bb.embed(x), ref.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny_conv", module=tiny, output_shape=(8,))

    register_backbone("tiny_vit", timm_model="test_vit")
    cfg = get_backbone_cfg("tiny_vit")
    assert cfg.resolution_multiple > 1
    side = 4 * cfg.resolution_multiple
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        vit = create_backbone("tiny_vit", weights="random", resolution=side)
    assert vit.embed(frames(2, side)).shape == (2, *vit.output_shape)
    # a timm file with its classifier head loads strictly (head dropped); the features are the file's
    import timm

    src = timm.create_model("test_vit", pretrained=False, img_size=side).eval()
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "tv.safetensors"))
    loaded = create_backbone("tiny_vit", weights=tmp_path / "tv.safetensors", resolution=side)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.mean, cfg.std))
    with torch.no_grad():
        x = (torch.from_numpy(frames(2, side)).float() / 255 - mean) / std
        ref = src.forward_head(src.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(loaded.embed(frames(2, side)), ref.numpy(), rtol=1e-4, atol=1e-5)

    @register_backbone
    def decorated() -> BackboneCfg:
        return get_backbone_cfg("tiny_conv")

    assert "decorated" in list_backbones()


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_backbones_and_download(tv_resnet, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pvrw.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["backbones"])
    assert result.exit_code == 0, result.output
    for needle in ["resnet18", "dinov2_reg", "(3840,)", "(128, 14, 14)", "CC-BY-NC-4.0", "MISSING"]:
        assert needle in result.output, needle
    torch.save(tv_resnet.state_dict(), tmp_path / "weights" / "resnet18-f37072fd.pth")
    result = runner.invoke(main, ["backbones", "res*", "-v", "-r", "84"])
    assert result.exit_code == 0 and f"found: {tmp_path / 'weights'}" in result.output
    assert "(128, 11, 11)" in result.output and "bn_mode=frozen|pieg" in result.output
    assert runner.invoke(main, ["backbones", "nothing-like-this"]).exit_code != 0

    def offline(url, dst, progress=True):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    result = runner.invoke(main, ["download", "vc1"])
    assert result.exit_code != 0 and "could not download: vc1" in result.output
    assert "Unknown backbone" in runner.invoke(main, ["download", "nope"]).output
