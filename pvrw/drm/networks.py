"""DrM networks, layer for layer as in the reference (``XuGW-Kevin/DrM`` ``agents/drm.py`` / ``agents/drm_mw.py``).

The encoders are SB3 ``BaseFeaturesExtractor`` subclasses so that a policy can swap them:

- :class:`DrQEncoder`: the DrQ-v2 pixel encoder, its output size computed from the input resolution (the reference
  hard-codes ``32 * 35 * 35``, i.e. 84x84 inputs only);
- :class:`PiegExtractor`: the PIE-G head (``gemcollector/PIE-G`` ``pieg.py`` ``ResEncoder``) on top of frozen spatial
  ResNet18 features: current frames and temporal differences, ``Linear(., 1024)`` and ``LayerNorm(1024)``;
- SB3's ``FlattenExtractor`` for flat features (no trainable encoder).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

VARIANTS = ("drm", "drm_mw")


def weight_init(module: nn.Module) -> None:
    """
    DrQ-v2 / DrM ``utils.weight_init``: orthogonal weights (gain sqrt(2) for convolutions), zero biases.
    LayerNorm keeps PyTorch's defaults.

    :param module: applied through ``net.apply(weight_init)``
    """
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight.data)
        if module.bias is not None:
            module.bias.data.fill_(0.0)
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.orthogonal_(module.weight.data, nn.init.calculate_gain("relu"))
        if module.bias is not None:
            module.bias.data.fill_(0.0)


SHIFT_METHODS = ("grid_sample", "index")


class RandomShiftsAug(nn.Module):
    """
    DrQ-v2 random shift: replicate-pad by ``pad`` and shift every sample by an integer in ``[0, 2 * pad]`` on each
    axis (one shift per sample, shared by its stacked frames).

    ``method="grid_sample"`` (the reference) samples the padded float image with bilinear ``grid_sample`` on a grid of
    pixel centres: an integer shift up to the float rounding of that grid (up to 0.004 of a grey level of the
    neighbouring pixels leaks in). ``method="index"`` gathers the pixels instead: the same shifts from the same random
    draw, the exact pixel values, on any dtype (uint8 too, before the conversion to float) and 2-3x faster on a CPU;
    a deviation at the level of that rounding, which Adam's first steps can amplify to ~5e-6 in a weight. The
    reference asserts square images; here height and width are handled separately.

    :param pad: padding (and maximum shift) in pixels
    :param method: ``"grid_sample"`` (the reference's rounding) or ``"index"`` (exact and faster)
    """

    def __init__(self, pad: int = 4, method: str = "grid_sample"):
        super().__init__()
        if method not in SHIFT_METHODS:
            raise ValueError(f"Unknown random-shift method {method!r}, expected one of {SHIFT_METHODS}")
        self.pad = pad
        self.method = method

    def forward(self, x: th.Tensor) -> th.Tensor:
        if self.method == "index":
            return self._gather(x)
        n, _, h, w = x.shape
        # Padding bytes, then converting, gives the reference's padded float batch in ~half the time.
        x = F.pad(x, (self.pad,) * 4, "replicate")
        x = x if x.is_floating_point() else x.float()

        def axis(size: int) -> th.Tensor:
            eps = 1.0 / (size + 2 * self.pad)
            return th.linspace(-1.0 + eps, 1.0 - eps, size + 2 * self.pad, device=x.device, dtype=x.dtype)[:size]

        grid_x = axis(w).unsqueeze(0).expand(h, w)
        grid_y = axis(h).unsqueeze(1).expand(h, w)
        base_grid = th.stack([grid_x, grid_y], dim=2).unsqueeze(0).expand(n, h, w, 2)
        shift = self._draw(n, x)
        shift = shift * th.tensor([2.0 / (w + 2 * self.pad), 2.0 / (h + 2 * self.pad)], device=x.device, dtype=x.dtype)
        return F.grid_sample(x, base_grid + shift, padding_mode="zeros", align_corners=False)

    def _draw(self, n: int, x: th.Tensor) -> th.Tensor:
        """The reference's draw: ``(x, y)`` shifts per sample, randint into the (float) batch's dtype."""
        dtype = x.dtype if x.is_floating_point() else th.float32
        return th.randint(0, 2 * self.pad + 1, size=(n, 1, 1, 2), device=x.device, dtype=dtype)

    def _gather(self, x: th.Tensor) -> th.Tensor:
        n, channels, h, w = x.shape
        shift = self._draw(n, x).view(n, 2).long()
        # replicate padding = clamping the source index into the image
        rows = (th.arange(h, device=x.device) + shift[:, 1:] - self.pad).clamp_(0, h - 1)
        cols = (th.arange(w, device=x.device) + shift[:, :1] - self.pad).clamp_(0, w - 1)
        index = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, channels, h * w)
        return x.reshape(n, channels, h * w).gather(2, index).view(n, channels, h, w)


def scale_images(images: th.Tensor) -> th.Tensor:
    """``images / 255`` as float (SB3's ``preprocess_obs``), in place for float images; bytes are converted straight
    into ``channels_last``, the encoder's layout, where the division is one fast pass."""
    if images.is_floating_point():
        return images.div_(255.0)
    scaled = th.empty(images.shape, device=images.device, memory_format=th.channels_last)
    return scaled.copy_(images).div_(255.0)


def drq_encoder_output_side(size: int) -> int:
    """Side of the DrQ-v2 encoder's output map: one stride-2 3x3 conv, then three stride-1 3x3 convs, no padding."""
    return (size - 3) // 2 + 1 - 6


class DrQEncoder(BaseFeaturesExtractor):
    """
    DrQ-v2 encoder: ``Conv(C,32,3,s2) ReLU [Conv(32,32,3,s1) ReLU] x3``, flattened; ``repr_dim = 32 * s_h * s_w``.

    SB3 hands it images already divided by 255, so it only subtracts 0.5 (the reference computes ``obs / 255 - 0.5``).

    :param observation_space: channel-first image space ``(3 * frame_stack, H, W)``
    :param features_dim: None (the reference): the flat conv output is the representation; an int adds a projection
        ``Linear(32 * s_h * s_w, features_dim) ReLU`` as SB3's ``NatureCNN`` ends (not in DrQ-v2/DrM)
    """

    def __init__(self, observation_space: spaces.Box, features_dim: int | None = None):
        if len(observation_space.shape) != 3:
            raise ValueError(
                f"DrQEncoder needs channel-first images (C, H, W), got observation shape {observation_space.shape}; "
                "use MlpPolicy for flat features or PiegPolicy for spatial (k, C, h, w) features"
            )
        channels, height, width = observation_space.shape
        side_h, side_w = drq_encoder_output_side(height), drq_encoder_output_side(width)
        if side_h < 1 or side_w < 1:
            raise ValueError(
                f"Images of {height}x{width} (shape {observation_space.shape}) are too small for the DrQ-v2 encoder "
                "(need at least 15x15, channel-first: SB3 transposes uint8 images only)"
            )
        flat_dim = 32 * side_h * side_w
        super().__init__(observation_space, features_dim=flat_dim if features_dim is None else features_dim)
        # In-place ReLUs (the reference's are not): the same values without one activation-sized allocation each.
        self.convnet = nn.Sequential(
            nn.Conv2d(channels, 32, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, stride=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, stride=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, stride=1),
            nn.ReLU(inplace=True),
        )
        self.projection = None if features_dim is None else nn.Sequential(nn.Linear(flat_dim, features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        # Centred in the convolutions' layout (channels_last: the CPU (oneDNN) and CUDA convolutions are ~1.8x faster
        # in it). An input already in it (the shifted training batch) or with gradients (out= has none) is centred
        # as it is; any other is centred in one pass straight into the layout and, under autocast, into the dtype
        # the first convolution would convert it to.
        if observations.requires_grad or observations.is_contiguous(memory_format=th.channels_last):
            x = (observations - 0.5).contiguous(memory_format=th.channels_last)
        else:
            device = observations.device.type
            dtype = th.get_autocast_dtype(device) if th.is_autocast_enabled(device) else observations.dtype
            x = th.empty(observations.shape, dtype=dtype, device=observations.device, memory_format=th.channels_last)
            th.sub(observations, 0.5, out=x)
        # The last ReLU runs on the flatten order (NCHW): its backward then gets its gradient and saved output in one
        # layout (3.5x faster than mixing them; channels_last returns at the next convolution's backward).
        h = self.convnet[:-1](x)
        h = self.convnet[-1](h.contiguous()).view(h.shape[0], -1)
        return h if self.projection is None else self.projection(h)


class PiegExtractor(BaseFeaturesExtractor):
    """
    PIE-G head on stacked frozen spatial features ``(k, C, h, w)`` (e.g. ResNet18 ``layer2`` maps, C = 128).

    As ``ResEncoder.forward_conv`` + ``forward``: ``current = f[:, 1:]``, ``diff = current - f[:, :-1]``,
    ``concat([current, diff], dim=1)`` flattened (``2 (k-1) C h w`` values), then ``Linear(., 1024)`` and
    ``LayerNorm(1024)`` (no activation). This head is the only trainable part and, like the DrQ-v2 encoder in DrM, it
    is trained by the critic loss only.

    :param observation_space: ``Box`` of shape ``(k, C, h, w)`` with ``k >= 2`` stacked frames
    :param pieg_dim: output size of the fully connected layer (1024 in PIE-G)
    """

    def __init__(self, observation_space: spaces.Box, pieg_dim: int = 1024):
        shape = observation_space.shape
        if len(shape) != 4 or shape[0] < 2:
            raise ValueError(
                f"PiegPolicy needs stacked spatial features of shape (k>=2, C, h, w), got {shape}: PIE-G uses frame "
                "differences, so stack at least 2 frames (frame_stack=3 as in PIE-G) before PVRObservation"
            )
        super().__init__(observation_space, features_dim=pieg_dim)
        self.input_dim = 2 * (shape[0] - 1) * math.prod(shape[1:])
        self.fc = nn.Linear(self.input_dim, pieg_dim)
        self.ln = nn.LayerNorm(pieg_dim)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        current = observations[:, 1:]
        difference = current - observations[:, :-1]
        stacked = th.cat([current, difference], dim=1).reshape(observations.shape[0], -1)
        return self.ln(self.fc(stacked))


class OutputLinear(nn.Linear):
    """
    The output layer of a head (Q, V, action mean), computed in fp32 even under autocast. bf16 keeps 8 significant
    bits: a Q value of 50 would come out as a multiple of 0.25 and every action mean with three digits, which is what
    the TD errors and the exploration noise are added to. The layer is tiny (one or a few outputs), so this costs
    nothing; without autocast it is ``nn.Linear``.
    """

    def forward(self, x: th.Tensor) -> th.Tensor:
        if th.is_autocast_enabled(x.device.type):
            with th.autocast(x.device.type, enabled=False):
                return F.linear(x.float(), self.weight, self.bias)
        return super().forward(x)


def _trunk(repr_dim: int, feature_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())


def _activation(activation_fn: type[nn.Module] | None) -> nn.Module:
    # In-place ReLUs as in the reference: they also make the dormant-ratio hooks see post-ReLU values (dormant.py).
    if activation_fn is None or activation_fn is nn.ReLU:
        return nn.ReLU(inplace=True)
    return activation_fn()


def _mlp(
    in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation_fn: type[nn.Module] | None = None
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), _activation(activation_fn)]
        in_dim = width
    return nn.Sequential(*layers, OutputLinear(in_dim, out_dim))


def _q_head(
    in_dim: int, hidden_dims: Sequence[int], variant: str, activation_fn: type[nn.Module] | None = None
) -> nn.Sequential:
    if variant == "drm":
        return _mlp(in_dim, hidden_dims, 1, activation_fn)
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.Dropout(0.01), nn.LayerNorm(width), _activation(activation_fn)]
        in_dim = width
    return nn.Sequential(*layers, OutputLinear(in_dim, 1))


def _hidden(hidden_dim: int, net_arch: Sequence[int] | None) -> list[int]:
    """The hidden layer widths of a head: ``net_arch``, or the reference's two layers of ``hidden_dim``."""
    return [hidden_dim, hidden_dim] if net_arch is None else list(net_arch)


def min_q(q_values: Sequence[th.Tensor]) -> th.Tensor:
    """Element-wise minimum over the critics' Q values (clipped double Q for two critics)."""
    return functools.reduce(th.min, q_values)


class Actor(nn.Module):
    """
    ``trunk = Linear(repr, F) LayerNorm Tanh``; ``policy = Linear(F, H) ReLU Linear(H, H) ReLU Linear(H, A)``;
    returns the mean ``tanh(policy(trunk(x)))``. The exploration std is external (scheduled), see :func:`sample_action`.
    ``net_arch`` (hidden widths) and ``activation_fn`` replace the two ``H`` layers and the ReLUs when given.
    """

    def __init__(
        self,
        repr_dim: int,
        action_dim: int,
        feature_dim: int,
        hidden_dim: int,
        net_arch: Sequence[int] | None = None,
        activation_fn: type[nn.Module] | None = None,
    ):
        super().__init__()
        self.trunk = _trunk(repr_dim, feature_dim)
        self.policy = _mlp(feature_dim, _hidden(hidden_dim, net_arch), action_dim, activation_fn)

    def forward(self, features: th.Tensor) -> th.Tensor:
        return th.tanh(self.policy(self.trunk(features)))


class Critic(nn.Module):
    """
    Clipped double Q on one shared trunk: ``h = trunk(x)``, ``Q_i = head_i([h, a])``.
    ``variant="drm"``: plain MLP heads; ``variant="drm_mw"``: ``Linear Dropout(0.01) LayerNorm ReLU`` blocks.
    ``n_critics`` heads (2 in DrM) are the attributes ``Q1``, ``Q2``, ...; ``forward`` returns one value per head.
    """

    def __init__(
        self,
        repr_dim: int,
        action_dim: int,
        feature_dim: int,
        hidden_dim: int,
        variant: str = "drm",
        net_arch: Sequence[int] | None = None,
        activation_fn: type[nn.Module] | None = None,
        n_critics: int = 2,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Unknown DrM variant {variant!r}, expected one of {VARIANTS}")
        if n_critics < 1:
            raise ValueError(f"n_critics must be >= 1, got {n_critics}")
        self.n_critics = n_critics
        self.trunk = _trunk(repr_dim, feature_dim)
        for index in range(1, n_critics + 1):
            head = _q_head(feature_dim + action_dim, _hidden(hidden_dim, net_arch), variant, activation_fn)
            self.add_module(f"Q{index}", head)

    def forward(self, features: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        h_action = th.cat([self.trunk(features), actions], dim=-1)
        return tuple(getattr(self, f"Q{index}")(h_action) for index in range(1, self.n_critics + 1))


class ValueNetwork(nn.Module):
    """DrM's exploitation value net (``VNetwork``): its own trunk, then ``Linear ReLU Linear ReLU Linear(H, 1)``."""

    def __init__(
        self,
        repr_dim: int,
        feature_dim: int,
        hidden_dim: int,
        net_arch: Sequence[int] | None = None,
        activation_fn: type[nn.Module] | None = None,
    ):
        super().__init__()
        self.trunk = _trunk(repr_dim, feature_dim)
        self.V = _mlp(feature_dim, _hidden(hidden_dim, net_arch), 1, activation_fn)

    def forward(self, features: th.Tensor) -> th.Tensor:
        return self.V(self.trunk(features))


def sample_action(mean: th.Tensor, std: float, clip: float | None = None, eps: float = 1e-6) -> th.Tensor:
    """
    ``utils.TruncatedNormal.sample``: ``mean + clamp(std * N(0, 1), -clip, clip)`` clamped to ``[-1 + eps, 1 - eps]``
    with a straight-through gradient (the clamp passes gradients as the identity).

    :param mean: action means in [-1, 1]
    :param std: exploration standard deviation
    :param clip: noise clip (``stddev_clip``), or None for unclipped noise (acting)
    :param eps: margin kept from the bounds
    :return: sampled actions
    """
    noise = th.randn_like(mean) * std
    if clip is not None:
        noise = th.clamp(noise, -clip, clip)
    action = mean + noise
    clamped = th.clamp(action, -1.0 + eps, 1.0 - eps)
    return action - action.detach() + clamped.detach()
