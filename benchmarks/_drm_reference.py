"""Load the original DrM code (XuGW-Kevin/DrM ``agents/drm.py`` + ``utils.py``) from a directory at run time.

pvrw commits no reference code: the user fetches the two files, e.g.

    git clone https://github.com/XuGW-Kevin/DrM && python benchmarks/bench_drm_vs_reference.py --reference DrM

``DIR`` may hold ``drm.py`` and ``utils.py`` side by side or the repository layout (``agents/drm.py``, ``utils.py``).
Used by ``benchmarks/bench_drm_vs_reference.py`` and by ``tests/test_drm_reference.py`` (environment variable
``PVRW_DRM_REFERENCE``; the tests skip without it).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch as th
from torch import nn

#: ``DrMAgent`` constructor arguments matching ``pvrw.drm.DrM(variant="drm")``'s defaults (``cfgs/agent/drm.yaml`` +
#: the Meta-World task values pvrw uses: lambda_hat 0.6, max_perturb_factor 0.9, std ``linear(1.0,0.1,500000)``).
AGENT_KWARGS: dict[str, Any] = dict(
    lr=1e-4,
    feature_dim=50,
    hidden_dim=1024,
    critic_target_tau=0.01,
    dormant_threshold=0.025,
    target_dormant_ratio=0.2,
    dormant_temp=10.0,
    target_lambda=0.6,
    lambda_temp=50.0,
    dormant_perturb_interval=100_000,
    min_perturb_factor=0.2,
    max_perturb_factor=0.9,
    perturb_rate=2.0,
    num_expl_steps=2000,
    stddev_type="awake",
    stddev_schedule="linear(1.0,0.1,500000)",
    stddev_clip=0.3,
    expectile=0.9,
    use_tb=True,
)


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_reference(directory: str | Path) -> ModuleType:
    """
    Import the reference ``drm.py`` (with its ``utils``) from ``directory``.

    :param directory: holds ``drm.py`` + ``utils.py`` or ``agents/drm.py`` + ``utils.py``
    :return: the ``drm`` module; its ``utils`` module is ``module.utils``
    """
    directory = Path(directory)
    drm_path = next((p for p in (directory / "drm.py", directory / "agents" / "drm.py") if p.is_file()), None)
    if drm_path is None or not (directory / "utils.py").is_file():
        raise FileNotFoundError(
            f"{directory} must hold the original DrM's drm.py (or agents/drm.py) and utils.py "
            "(git clone https://github.com/XuGW-Kevin/DrM)"
        )
    # drm.py does ``import utils``: give it the reference's, then restore whatever ``utils`` was imported before.
    previous = sys.modules.get("utils")
    sys.modules["utils"] = _load("utils", directory / "utils.py")
    try:
        return _load("drm_reference_agent", drm_path)
    finally:
        if previous is None:
            del sys.modules["utils"]
        else:
            sys.modules["utils"] = previous


class FeatureEncoder(nn.Module):
    """Stand-in for the reference ``Encoder`` on flat features: flattens (no ``/ 255``). Its one unused parameter
    only lets the reference build its encoder Adam, which then skips it (no gradient)."""

    def __init__(self, obs_shape: tuple[int, ...]):
        super().__init__()
        self.repr_dim = math.prod(obs_shape)
        self.unused = nn.Parameter(th.zeros(1))

    def forward(self, obs: th.Tensor) -> th.Tensor:
        return obs.reshape(obs.shape[0], -1)


def make_agent(ref: ModuleType, obs_shape: tuple[int, ...], action_dim: int, device: str = "cpu", **kwargs: Any) -> Any:
    """
    A reference ``DrMAgent``. Pixels ``(C, H, W)``: the reference encoder, its hard-coded ``repr_dim = 32 * 35 * 35``
    (84 px only) replaced by the size of its actual output; features (any other shape): :class:`FeatureEncoder` and no
    augmentation, as pvrw's ``MlpPolicy``.

    :param ref: the module from :func:`load_reference`
    :param obs_shape: observation shape
    :param action_dim: action dimension
    :param device: torch device
    :param kwargs: overrides of :data:`AGENT_KWARGS`
    """
    pixels = len(obs_shape) == 3
    original = ref.Encoder

    class Encoder(original):  # type: ignore[misc,valid-type]
        def __init__(self, shape: tuple[int, ...]):
            super().__init__(shape)
            with th.no_grad():
                self.repr_dim = self.convnet(th.zeros(1, *shape)).numel()

    ref.Encoder = Encoder if pixels else FeatureEncoder
    try:
        agent = ref.DrMAgent(obs_shape, (action_dim,), device, **{**AGENT_KWARGS, **kwargs})
    finally:
        ref.Encoder = original
    if not pixels:
        agent.aug = nn.Identity()
    return agent


def copy_weights(model: Any, agent: Any) -> None:
    """
    Copy a pvrw ``DrM``'s weights into a reference ``DrMAgent`` (same module names; the value net is the reference's
    ``value_predictor``; a features model keeps the agent's stand-in encoder).

    :param model: a ``pvrw.drm.DrM`` of the same shapes
    :param agent: a reference ``DrMAgent`` from :func:`make_agent`
    """
    pairs = [
        (model.actor, agent.actor),
        (model.critic, agent.critic),
        (model.critic_target, agent.critic_target),
        (model.value_net, agent.value_predictor),
    ]
    if hasattr(agent.encoder, "convnet"):
        pairs.append((model.policy.features_extractor.convnet, agent.encoder.convnet))
    for source, target in pairs:
        target.load_state_dict(source.state_dict())


def reference_networks(agent: Any) -> dict[str, nn.Module]:
    """The reference agent's networks under pvrw's names (for parameter comparisons)."""
    nets = dict(actor=agent.actor, critic=agent.critic, critic_target=agent.critic_target)
    nets["value_net"] = agent.value_predictor
    if hasattr(agent.encoder, "convnet"):
        nets["encoder"] = agent.encoder.convnet
    return nets
