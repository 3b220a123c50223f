"""The run configuration: one flat, validated, YAML-serialisable description of a training run.

The model is the RL Zoo's: a few run-level keys (task, observation variant, budget, evaluation schedule) plus
``algo_kwargs`` passed verbatim to the algorithm's constructor and ``env_kwargs`` passed to the env factory.
Every key is validated, and an unknown key is reported by name with the keys that would have been accepted.
Budgets are counted in environment *frames* (agent steps x action repeat), as DrM and DrQ-v2 count them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pvrw.runs.config_algos import ALGOS, ConfigError, algo_parameters, check_algo_kwargs, load_algo_class  # noqa: F401
from pvrw.runs.config_algos import algo_class_name as _class_name

#: the study's observation variants; "none" means the agent learns from pixels
PVRS: tuple[str, ...] = ("none", "resnet18", "dinov2", "dinov2_reg", "vc1")

METAWORLD_PREFIX = "metaworld/"

#: values of the ``replay_storage`` key (the storages of pvrw.drm.DrMReplayBuffer)
REPLAY_STORAGES: tuple[str, ...] = ("disk", "memory")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; hyper-parameters are written that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text (safe), with ``1e-4`` read as a number."""
    return yaml.load(text, Loader=_Loader)


@dataclass
class RunConfig:
    """Everything needed to (re)create a training run. Defaults are the study's settings."""

    algo: str = "drm"
    """algorithm: drm (pvrw.drm.DrM), sac or td3 (Stable-Baselines3)"""
    env: str = "metaworld/push-v3"
    """task: metaworld/<task-v3> (pixel env from pvrw.make_env) or any Gymnasium id (gymnasium.make)"""
    pvr: str = "none"
    """observation: none (pixels) or a frozen backbone name (resnet18, dinov2, dinov2_reg, vc1, ...)"""
    resolution: int = 112
    """rendered image side in pixels (Meta-World envs)"""
    seed: int = 0
    """random seed of the agent and the environment"""
    frames: int = 1_000_000
    """training budget in environment frames (= agent steps x action_repeat)"""
    frame_stack: int = 3
    """number of stacked frames in an observation (Meta-World envs)"""
    action_repeat: int = 2
    """simulator steps per agent step (Meta-World envs; Gymnasium envs use 1)"""
    weights: str | None = None
    """backbone weights: a file path, 'random' (smoke tests only), or null to resolve the pretrained weights"""
    device: str = "auto"
    """torch device for the agent and the backbone: auto, cpu, cuda, cuda:1, ..."""
    threads: int = 0
    """torch CPU threads (0: torch's default). 1 is much faster on a CPU shared with other jobs"""
    precision: str = "fp32"
    """DrM only: fp32 (the reference's maths) or bf16 (autocast, about 2x faster on CPUs with AVX512-bf16/AMX and
    recent GPUs; a deviation from the reference, see pvrw.drm.DrM)"""
    policy: str | None = None
    """policy class name; null picks it from the observation (CnnPolicy / PiegPolicy / MlpPolicy)"""
    eval_every: int = 10_000
    """evaluate every this many frames (0 = only at the end)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    checkpoint_every: int = 100_000
    """save model + replay buffer every this many frames (0 = only at the end)"""
    save_replay_buffer: bool = True
    """save the replay buffer with each checkpoint (needed for a faithful --resume)"""
    replay_storage: str = "disk"
    """where pvrw's replay buffer (DrMReplayBuffer) keeps its arrays: disk (memory-mapped files in RUN_DIR/replay/;
    a checkpoint writes only the transitions added since the previous one, RAM holds the working set) or memory
    (numpy arrays; each checkpoint pickles everything stored). Other buffers (SB3's) are always in memory"""
    video: bool = True
    """record the first episode of every evaluation to videos/"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments of the env factory (pvrw.make_env or gymnasium.make)"""
    pvr_kwargs: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments of pvrw.PVRObservation (e.g. cache: path to a feature cache)"""
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the algorithm's constructor (DrM / SAC / TD3 hyper-parameters)"""

    # -- derived values -------------------------------------------------------------------------------------
    @property
    def is_metaworld(self) -> bool:
        return self.env.startswith(METAWORLD_PREFIX)

    @property
    def frames_per_step(self) -> int:
        """Environment frames per agent step: the action repeat for Meta-World, 1 for Gymnasium envs."""
        return self.action_repeat if self.is_metaworld else 1

    @property
    def total_timesteps(self) -> int:
        """The budget in agent steps (what SB3's ``learn`` counts)."""
        return -(-self.frames // self.frames_per_step)

    @property
    def algo_name(self) -> str:
        """The algorithm, or DrM's variant when one is set (``drm_mw``, ``drqv2``)."""
        variant = self.algo_kwargs.get("variant") if self.algo == "drm" else None
        return variant if isinstance(variant, str) else self.algo

    @property
    def variant(self) -> str:
        """The name a plot legend gives this run's variant (everything but the seed)."""
        return f"{self.algo_name}/{self.pvr}@{self.resolution}"

    def group_key(self) -> str:
        """Runs whose configs differ only by seed share this key (for averaging over seeds)."""
        d = self.to_dict()
        d.pop("seed")
        for k in ("device", "threads", "video", "checkpoint_every", "save_replay_buffer", "replay_storage"):
            d.pop(k)
        return yaml.safe_dump(d, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- validation -----------------------------------------------------------------------------------------
    def validate(self) -> RunConfig:
        """Check every value; raise :class:`ConfigError` naming the first bad key. Returns ``self``."""
        if self.algo not in ALGOS:
            raise ConfigError(f"algo: unknown algorithm {self.algo!r}; choose one of {', '.join(ALGOS)}")
        if not isinstance(self.env, str) or not self.env:
            raise ConfigError("env: must be a task id such as metaworld/push-v3 or Pendulum-v1")
        for key in ("resolution", "frames", "frame_stack", "action_repeat", "eval_episodes"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}: must be a positive integer, got {value!r}")
        for key in ("seed", "eval_every", "checkpoint_every", "threads"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{key}: must be a non-negative integer, got {value!r}")
        for key in ("env_kwargs", "pvr_kwargs", "algo_kwargs"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f"{key}: must be a mapping of keyword arguments, got {getattr(self, key)!r}")
        if self.replay_storage not in REPLAY_STORAGES:
            raise ConfigError(
                f"replay_storage: must be one of {', '.join(REPLAY_STORAGES)}, got {self.replay_storage!r}"
            )
        if not isinstance(self.pvr, str) or not self.pvr:
            raise ConfigError(f"pvr: must be 'none' or a backbone name such as {', '.join(PVRS[1:])}")
        if self.pvr == "none" and self.pvr_kwargs:
            raise ConfigError("pvr_kwargs: given but pvr is 'none' (pixels); set pvr to a backbone or drop pvr_kwargs")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision: must be fp32 or bf16, got {self.precision!r}")
        if self.precision != "fp32" and self.algo != "drm":
            raise ConfigError(f"precision: {self.precision} is a DrM option; {self.algo} runs in fp32")
        if "precision" in self.algo_kwargs:
            raise ConfigError("algo_kwargs.precision: set the top-level key precision instead")
        check_algo_kwargs(self.algo_kwargs, self.algo, self.policy)
        return self


TOP_LEVEL_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunConfig))

#: named bundles of overrides. "study" is the defaults; "smoke" is a CPU-minutes DrM run on Meta-World pixels that
#: proves the pipeline end to end (64 px, fast rendering, 100-step episodes, 2,000 frames, batch 32, one torch
#: thread; the DrM networks keep their study sizes). It does NOT learn the task.
PRESETS: dict[str, dict[str, Any]] = {
    "study": {},
    "smoke": {
        "resolution": 64,
        "frames": 2_000,
        "threads": 1,
        "eval_every": 500,
        "eval_episodes": 1,
        "checkpoint_every": 1_000,
        "env_kwargs": {"max_episode_steps": 100, "render_quality": "fast"},
        "algo_kwargs": {"buffer_size": 10_000, "batch_size": 32, "learning_starts": 250},
    },
}


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one ``KEY=VALUE`` override; VALUE is read as YAML (``1e-4``, ``true``, ``[1, 2]``, ``'linear(1,0.1,5e5)'``)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set batch_size=128")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot read value {raw!r} ({err.__class__.__name__})") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], algo: str) -> dict[str, Any]:
    """Merge ``overrides`` into the config dict ``data``.

    A key is a run-level key (``frames``), a dotted key into a mapping (``env_kwargs.camera``,
    ``policy_kwargs.hidden_dim``), or a bare constructor argument of the algorithm (``batch_size``), which goes
    into ``algo_kwargs``.
    """
    data = {**data, **{k: dict(data.get(k) or {}) for k in ("env_kwargs", "pvr_kwargs", "algo_kwargs")}}
    for key, value in overrides.items():
        head, _, tail = key.partition(".")
        if tail and head in ("env_kwargs", "pvr_kwargs", "algo_kwargs"):
            data[head][tail] = value
        elif tail and head in algo_parameters(algo):  # e.g. policy_kwargs.hidden_dim
            nested = data["algo_kwargs"].get(head) or {}
            if not isinstance(nested, dict):
                raise ConfigError(f"{key}: {head} is {nested!r}, not a mapping")
            data["algo_kwargs"][head] = {**nested, tail: value}
        elif tail:
            raise ConfigError(
                f"{key}: dotted keys go into env_kwargs, pvr_kwargs, algo_kwargs or a mapping argument of "
                f"{_class_name(algo)} (e.g. policy_kwargs.hidden_dim)"
            )
        elif key in TOP_LEVEL_KEYS:
            if key.endswith("_kwargs"):
                if not isinstance(value, dict):
                    raise ConfigError(f"{key}: must be a mapping, got {value!r}")
                data[key].update(value)
            else:
                data[key] = value
        elif key in algo_parameters(algo):
            data["algo_kwargs"][key] = value
        else:
            close = difflib.get_close_matches(key, [*TOP_LEVEL_KEYS, *algo_parameters(algo)], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"{key}: unknown config key{hint}; use a run key ({', '.join(TOP_LEVEL_KEYS)}) "
                f"or an argument of {_class_name(algo)} ({', '.join(sorted(algo_parameters(algo)))})"
            )
    check_algo_kwargs(data["algo_kwargs"], algo, data.get("policy"))  # here, so the error names the layer
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        data = yaml_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def build_config(
    *layers: dict[str, Any] | None,
    preset: str | None = None,
    layer_names: list[str] | None = None,
    notes: list[str] | None = None,
) -> RunConfig:
    """Resolve a :class:`RunConfig` from defaults, an optional preset, then each layer in order (later wins).

    Each layer is a dict of overrides in :func:`apply_overrides` form (YAML file contents, command-line options).
    Bare algorithm arguments are checked against the algorithm the layers finally select.

    :param layer_names: where each layer came from (e.g. the config file's path), to prefix its errors.
    :param notes: if given, a sentence is appended for each value pvrw chose (a preset's resolution moved to the
        nearest side the backbone takes, when no layer sets the resolution).
    """
    names = list(layer_names or [])
    named: list[tuple[str | None, dict[str, Any]]] = []
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        named.append((f"preset {preset}", PRESETS[preset]))
    for i, layer in enumerate(layers):
        if layer:
            named.append((names[i] if i < len(names) else None, layer))
    algo = RunConfig.algo
    for _, layer in named:
        algo = layer.get("algo", algo)
    if algo not in ALGOS:
        raise ConfigError(f"algo: unknown algorithm {algo!r}; choose one of {', '.join(ALGOS)}")
    data = RunConfig().to_dict()
    for name, layer in named:
        try:
            data = apply_overrides(data, layer, algo)
        except ConfigError as err:
            raise ConfigError(f"{name}: {err}" if name else str(err)) from None
    own_side = any("resolution" in layer for _, layer in named[1:])
    if preset is not None and "resolution" in PRESETS[preset] and not own_side:
        note = _fit_preset_resolution(data, preset)
        if note and notes is not None:
            notes.append(note)
    try:
        return RunConfig(**data).validate()
    except TypeError as err:  # a value of the wrong type reached a dataclass field
        raise ConfigError(str(err)) from None


def _fit_preset_resolution(data: dict[str, Any], preset: str) -> str | None:
    """Move a preset's resolution to the nearest side the run's backbone takes; return what was done, if anything."""
    if data.get("pvr") in (None, "none"):
        return None
    from pvrw.backbones import get_backbone_cfg, list_backbones

    if data["pvr"] not in list_backbones():
        return None  # reported by the run's checks
    cfg = get_backbone_cfg(data["pvr"])
    side = data["resolution"]
    try:
        cfg.check_resolution(side)
        return None
    except ValueError:
        data["resolution"] = cfg.nearest_side(side)
    return (f"preset {preset}: resolution {data['resolution']}, the side nearest to {side} that {cfg.name} takes "
            f"({cfg.side_rule})")


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from pvrw.runs.layout import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a resolved config written by :func:`save_config` (unknown keys are errors)."""
    data = read_yaml(path)
    bad = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if bad:
        raise ConfigError(f"{path}: unknown key {bad[0]!r}; valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    merged = {**RunConfig().to_dict(), **data}
    return RunConfig(**merged).validate()
