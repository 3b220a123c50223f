"""Fine-tuning a registered backbone inside DrM: :class:`FinetuneExtractor` and :class:`FinetunePolicy`.

The replay holds images (as for pixels); every update random-shifts them (DrQ, pad 4), runs the backbone with
gradients and a head on top, and the critic loss trains the head and the chosen backbone parameters, as DrM trains its
own encoder (the actor reads detached features).

``finetune=``:

* ``"none"``: nothing of the backbone is trained (a frozen backbone on replayed images, the control for the others);
* ``"lastN"`` (``"last2"``...): the last N blocks (ViT transformer blocks, with the final norm after them; ResNet
  residual blocks of ``layer1``/``layer2``) are trained, the rest frozen;
* ``"all"``: every backbone parameter;
* ``"lora:R"`` (``"lora:8"``): rank-R adapters (:class:`~pvrw.backbones.lora.LoRALinear`) on every block's attention
  ``qkv`` and ``proj`` (ViTs only), nothing else of the backbone; they start as the identity.

BatchNorm (``bn=``): ``"frozen"`` (default) keeps every BatchNorm in eval mode, running statistics, even during
updates; ``"update"`` lets them follow the training mode (batch statistics and updated running statistics during
updates, as PIE-G's encoder does). The head: the frames' readouts concatenated (flat readouts), the PIE-G head
(ResNet maps) or :class:`~pvrw.drm.pvr_heads.PatchConvExtractor` (``tokens="patches"``).

The backbone has its own learning rate (``backbone_lr`` of :class:`FinetunePolicy`), which follows the algorithm's
learning-rate schedule in proportion. DrM's shrink-and-perturb leaves the backbone alone (it would pull pretrained
weights toward a random init); the head is perturbed as DrM's PIE-G head is.
"""

from __future__ import annotations

import re
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn
from torch.nn import functional as F

from pvrw.drm.networks import PiegExtractor
from pvrw.drm.policies import DrMPolicy
from pvrw.drm.pvr_heads import PatchConvExtractor

BN_MODES = ("frozen", "update")


def parse_finetune(finetune: str) -> tuple[str, int]:
    """``"none" | "all" | "lastN" | "lora:R"`` -> ``(kind, number)``; anything else raises one ValueError line."""
    text = str(finetune).strip().lower()
    if text in ("none", "all"):
        return text, 0
    match = re.fullmatch(r"last(\d+)|lora:(\d+)", text)
    if match is None or int(match.group(1) or match.group(2)) < 1:
        raise ValueError(f"finetune={finetune!r}: use 'none', 'all', 'lastN' (e.g. 'last2': the last N blocks) or "
                         "'lora:R' (e.g. 'lora:8': rank-R adapters on the attention projections).")
    return ("last", int(match.group(1))) if match.group(1) else ("lora", int(match.group(2)))


def backbone_blocks(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(blocks, after)``: the backbone's blocks in order, and the modules after the last one (a ViT's final norm)."""
    root = getattr(model, "weights_module", model)
    if isinstance(getattr(root, "blocks", None), nn.Sequential):
        return list(root.blocks), [m for m in (getattr(root, "norm", None), getattr(root, "fc_norm", None))
                                   if m is not None]
    layers = [getattr(root, f"layer{i}", None) for i in range(1, 5)]
    blocks = [b for layer in layers if isinstance(layer, nn.Sequential) for b in layer]
    if blocks:
        return blocks, []
    raise ValueError(f"finetune='lastN' needs a ViT (blocks) or a ResNet (layer1..); {type(root).__name__} has "
                     "neither: use 'all' or 'none'.")


def select_trainable(model: nn.Module, finetune: str, lora_alpha: float | None = None,
                     name: str = "this backbone") -> nn.Module:
    """Freeze ``model`` except what ``finetune`` trains (adding LoRA adapters for ``"lora:R"``); returns it."""
    kind, number = parse_finetune(finetune)
    model.requires_grad_(kind == "all")
    if kind == "last":
        blocks, after = backbone_blocks(model)
        if number > len(blocks):
            raise ValueError(f"finetune={finetune!r}: {name} has {len(blocks)} blocks.")
        for module in [*blocks[-number:], *after]:
            module.requires_grad_(True)
    elif kind == "lora":
        from pvrw.backbones.lora import add_lora

        add_lora(model, number, lora_alpha)
    return model


def finetune_parameter_counts(name: str, resolution: int, finetune: str, **options: Any) -> dict[str, int]:
    """``backbone_trainable`` / ``backbone_frozen`` parameters of a registered backbone under ``finetune``, counted
    on the meta device (no weights, no memory)."""
    from pvrw.backbones import get_backbone_cfg

    cfg = get_backbone_cfg(name)
    with th.device("meta"):
        model = cfg.build_model(cfg.check_resolution(resolution), **cfg.resolve_options(**options))
        if hasattr(model, "drop_unused"):
            model.drop_unused()
        select_trainable(model, finetune, name=name)
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return dict(backbone_trainable=trainable, backbone_frozen=sum(p.numel() for p in params) - trainable)


class FinetuneExtractor(BaseFeaturesExtractor):
    """A registered backbone, partly trainable, plus a head, on stacked images ``(3k, H, W)`` (SB3 scales them to
    [0, 1]; the policy's random shift comes first).

    :param observation_space: channel-first image stack ``(3k, H, W)``
    :param backbone: registry name (``"resnet18"``, ``"dinov2"``, ``"vc1"``, a custom entry...)
    :param weights: as :func:`~pvrw.backbones.create_backbone` (None: resolve offline; ``"random"``: smoke tests)
    :param resolution: side the backbone sees (None: the image side); images are resized (bicubic, antialias)
    :param finetune: see the module docstring
    :param bn: ``"frozen"`` or ``"update"`` (BatchNorm statistics, see the module docstring)
    :param backbone_options: entry options (``tokens``, ``layers``...)
    :param head_kwargs: keyword arguments of the head (``pieg_dim``, ``compression_dim``)
    :param lora_alpha: LoRA scaling numerator (None: the rank, scale 1)
    """

    def __init__(self, observation_space: spaces.Box, backbone: str = "resnet18", weights: Any = None,
                 resolution: int | None = None, finetune: str = "last2", bn: str = "frozen",
                 backbone_options: dict[str, Any] | None = None, head_kwargs: dict[str, Any] | None = None,
                 lora_alpha: float | None = None):
        from pvrw.backbones import create_backbone

        shape = tuple(observation_space.shape)
        if len(shape) != 3 or shape[0] % 3:
            raise ValueError(f"FinetunePolicy needs stacked RGB images (3k, H, W), got {shape}: run it on pixels "
                             "(no PVRObservation), the backbone runs inside the policy")
        if bn not in BN_MODES:
            raise ValueError(f"bn={bn!r}: use 'frozen' (running statistics, default) or 'update' (PIE-G).")
        parse_finetune(finetune)  # a bad mode fails before the backbone is built
        frozen = create_backbone(backbone, weights=weights, resolution=resolution or shape[-1],
                                 **(backbone_options or {}))
        k = shape[0] // 3
        out_shape = (k, *frozen.output_shape)
        if len(frozen.output_shape) == 1:
            head: nn.Module = nn.Flatten()
            features_dim = k * frozen.output_shape[0]
        else:
            head_cls = PatchConvExtractor if frozen.options.get("tokens") == "patches" else PiegExtractor
            head = head_cls(spaces.Box(-th.inf, th.inf, out_shape), **(head_kwargs or {}))
            features_dim = head.features_dim
        super().__init__(observation_space, features_dim=features_dim)
        self.backbone_name, self.fingerprint, self.finetune, self.bn = frozen.name, frozen.fingerprint, finetune, bn
        self.resolution, self.backbone_shape = frozen.resolution, frozen.output_shape
        self.register_buffer("mean", frozen.mean.clone(), persistent=False)
        self.register_buffer("std", frozen.std.clone(), persistent=False)
        self.backbone = select_trainable(frozen.model.float(), finetune, lora_alpha, name=backbone)
        self.backbone.pvrw_no_perturb = True  # DrM's shrink-and-perturb must not pull it toward a random init
        self.head = head
        # DrMPolicy applies DrM's weight_init to the whole encoder: the pretrained state is put back after it
        self._pretrained = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
        self.train(False)

    def restore_pretrained(self) -> None:
        """Put back the backbone state of construction time (after DrM's init pass), once."""
        state = self.__dict__.pop("_pretrained", None)
        if state is not None:
            self.backbone.load_state_dict(state)

    def train(self, mode: bool = True) -> FinetuneExtractor:
        super().train(mode)
        if self.bn == "frozen":
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, observations: th.Tensor) -> th.Tensor:
        b, c, h, w = observations.shape
        x = observations.reshape(b * (c // 3), 3, h, w)
        if (h, w) != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0.0, 1.0)
        features = self.backbone((x - self.mean) / self.std)
        return self.head(features.reshape(b, c // 3, *features.shape[1:]))

    def parameter_counts(self) -> dict[str, int]:
        """``backbone_trainable``, ``backbone_frozen`` and ``head`` parameter counts."""
        trainable = sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.backbone.parameters() if not p.requires_grad)
        return dict(backbone_trainable=trainable, backbone_frozen=frozen,
                    head=sum(p.numel() for p in self.head.parameters()))


def _scale_lr(optimizer: th.optim.Optimizer, *_: Any) -> None:
    for group in optimizer.param_groups:
        if "lr_scale" in group:
            group["lr"] = group["lr"] * group["lr_scale"]


def _unscale_lr(optimizer: th.optim.Optimizer, *_: Any) -> None:
    for group in optimizer.param_groups:
        if "lr_scale" in group:
            group["lr"] = group["lr"] / group["lr_scale"]


class FinetunePolicy(DrMPolicy):
    """DrM policy whose encoder is a (partly) trainable registered backbone: :class:`FinetuneExtractor`.

    ``policy_kwargs=dict(features_extractor_kwargs=dict(backbone="dinov2", finetune="lora:8"), backbone_lr=1e-5)``.

    :param backbone_lr: learning rate of the backbone's trainable parameters at the start (None: the algorithm's);
        it follows the learning-rate schedule in proportion. The head uses the algorithm's learning rate.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, lr_schedule: Schedule, *args: Any,
                 backbone_lr: float | None = None,
                 features_extractor_class: type[BaseFeaturesExtractor] = FinetuneExtractor, **kwargs: Any):
        self.backbone_lr = backbone_lr
        super().__init__(observation_space, action_space, lr_schedule, *args,
                         features_extractor_class=features_extractor_class, **kwargs)

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        extractors = [e for e in (self.features_extractor, self.actor_features_extractor) if e is not None]
        for extractor in extractors:
            extractor.restore_pretrained()
        encoder = self.features_extractor
        lr = lr_schedule(1)
        head = [p for n, p in encoder.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
        body = [p for p in encoder.backbone.parameters() if p.requires_grad]
        groups = [{"params": head}] if head else []
        if body:
            groups.append({"params": body, "lr_scale": (self.backbone_lr or lr) / lr})
        self.encoder_optimizer = self.make_optimizer(groups, lr) if groups else None
        if self.encoder_optimizer is not None:
            self.encoder_optimizer.register_step_pre_hook(_scale_lr)
            self.encoder_optimizer.register_step_post_hook(_unscale_lr)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["backbone_lr"] = self.backbone_lr
        return data
