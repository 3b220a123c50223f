"""DrM (Xu et al., ICLR 2024) as a Stable-Baselines3 off-policy algorithm.

Paper: https://arxiv.org/abs/2310.19668 -- original code: https://github.com/XuGW-Kevin/DrM (commit 317116a), built
on DrQ-v2 (https://github.com/facebookresearch/drqv2). The update is the reference ``DrMAgent.update`` step for step.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, ReplayBufferSamples, Schedule
from stable_baselines3.common.vec_env import VecEnv  # noqa: F401  (SB3's GymEnv names it: resolves the type hints)

from pvrw._malloc import keep_freed_memory
from pvrw.drm.buffers import DrMReplayBuffer
from pvrw.drm.dict_buffers import DrMDictReplayBuffer, default_replay_buffer
from pvrw.drm.drqv2 import DrQv2Variant, remove_value_net
from pvrw.drm.mechanisms import DormantMechanisms
from pvrw.drm.networks import Actor, Critic, ValueNetwork
from pvrw.drm.options import PRECISIONS, STDDEV_TYPES, VARIANT_DEFAULTS, bf16_supported, check_options  # noqa: F401
from pvrw.drm.persistence import DrMPersistence
from pvrw.drm.policies import CnnPolicy, DrMPolicy, MlpPolicy, MultiInputPolicy, PiegPolicy
from pvrw.drm.finetune import FinetunePolicy
from pvrw.drm.pvr_heads import AttentionPoolPolicy, PatchPolicy
from pvrw.drm.policy_kwargs import check_policy_kwargs, refuse_algorithm_kwargs
from pvrw.drm.remedy_options import DormantRemedies
from pvrw.drm.schedules import ScheduleSpec, parse_step_schedule
from pvrw.drm.update import DrMUpdate

SelfDrM = TypeVar("SelfDrM", bound="DrM")


class DrM(DrQv2Variant, DormantRemedies, DrMUpdate, DormantMechanisms, DrMPersistence, OffPolicyAlgorithm):
    """
    DrM: dormant-ratio minimisation on top of DrQ-v2 (deterministic actor with scheduled exploration noise, clipped
    double Q, n-step returns, random-shift augmentation), with dormant-ratio-guided perturbation, exploration and
    exploitation (expectile value net blended into the TD target).

    Defaults map the reference configuration onto SB3: ``learning_starts = num_seed_frames / action_repeat = 2000``,
    ``train_freq = update_every_steps = 2``, ``gradient_steps = n_envs``, ``batch_size = 256``, ``buffer_size = 1e6``,
    ``learning_rate = 1e-4``, ``tau = critic_target_tau = 0.01``. All schedules count agent steps
    (``num_timesteps``). ``variant`` picks the reference agent and fills the ``None`` arguments from
    :data:`VARIANT_DEFAULTS`; explicit arguments win. Timing follows SB3: the first update runs once ``num_timesteps >
    learning_starts`` (step 2002 with the defaults; the reference's first update is at step 2000), and an update at
    ``num_timesteps = t`` uses ``t`` wherever the reference uses its ``step`` (perturbation, awakening, schedules).

    Faithfulness notes: the encoder is trained by the critic loss only (actor and value losses see detached features,
    unlike SB3's TD3/SAC shared extractors); the dormant ratio is measured on the actor at every update, on the
    augmented training batch, before any network changes, and the perturbation check at the top of an update uses
    the ratio of the previous update, as in ``DrMAgent.update``.

    :param policy: ``"CnnPolicy"`` (pixels), ``"MlpPolicy"`` (flat features), ``"PiegPolicy"`` (spatial features),
        ``"MultiInputPolicy"`` (Dict observations) or a policy class
    :param env: the environment to learn from (if registered in Gym, can be str)
    :param variant: ``"drm"`` (``agents/drm.py``: MLP Q-heads, dormant-dependent lambda, awakening only after
        ``num_expl_steps``; the default, as the study used it) or ``"drm_mw"`` (``agents/drm_mw.py``: Dropout +
        LayerNorm Q-heads, constant lambda, awakening at any step) or ``"drqv2"`` (the DrQ-v2 baseline, see
        :mod:`pvrw.drm.drqv2`: no value net, no perturbation, no awakening, std = ``stddev_schedule(step)``)
    :param learning_rate: learning rate of the four Adam optimizers (``lr``), constant or SB3 progress schedule
    :param buffer_size: replay buffer size
    :param learning_starts: agent steps collected before the first update (``num_seed_frames / action_repeat``)
    :param batch_size: minibatch size
    :param tau: target critic EMA coefficient (``critic_target_tau``)
    :param gamma: discount; None: variant default (0.99 / 0.97)
    :param train_freq: update every ``train_freq`` steps (``update_every_steps``)
    :param gradient_steps: gradient steps per update; None: ``n_envs``, which keeps the reference's one update per
        ``train_freq`` transitions when SB3 collects ``train_freq`` steps from each of several envs
    :param action_noise: extra SB3 action noise (not in DrM; keep None)
    :param replay_buffer_class: replay buffer class; None: :class:`~pvrw.drm.buffers.DrMReplayBuffer` (each frame
        stored once, reference n-step windows) with ``n_steps`` and ``gamma``, or
        :class:`~pvrw.drm.dict_buffers.DrMDictReplayBuffer` for Dict observations. SB3's ``NStepReplayBuffer`` takes
        the same ``replay_buffer_kwargs=dict(n_steps=..., gamma=...)``
    :param replay_buffer_kwargs: keyword arguments for the replay buffer
    :param optimize_memory_usage: SB3's memory-efficient buffer option; with DrM's buffers (which already store each
        frame once) a no-op, said once at ``verbose >= 1``
    :param n_steps: n-step return length; None: variant default (3 / 10)
    :param num_expl_steps: agent steps of uniform random actions (``num_expl_steps``); None: ``learning_starts``
        (both are 2000 in the reference)
    :param stddev_type: ``"awake"`` (reference default) or ``"dormant"`` (std = sigma(beta) only)
    :param stddev_schedule: schedule restarted at the awakening step: number, DrQ-v2 string such as
        ``'linear(1.0,0.1,500000)'`` (the Meta-World / DMC-medium value) or a :class:`~pvrw.drm.schedules.StepSchedule`
    :param stddev_clip: clip of the target- and actor-update noise (0.3)
    :param dormant_threshold: tau of the dormant test (0.025)
    :param target_dormant_ratio: beta_hat (0.2)
    :param dormant_temp: inverse temperature of the dormant std (10)
    :param dormant_perturb_interval: perturb every this many agent steps (100,000)
    :param min_perturb_factor: lower clip of the perturbation factor (0.2)
    :param max_perturb_factor: upper clip; None: variant default (0.9 / 0.95)
    :param perturb_rate: slope of the perturbation factor (2)
    :param target_lambda: lambda_hat (``drm``) or the constant lambda (``drm_mw``); None: variant default (0.6 / 0.5)
    :param lambda_temp: inverse temperature of the ``drm`` lambda (50); unused by ``drm_mw``
    :param expectile: expectile of the value regression (0.9)
    :param dormant_nets: networks whose dormant ratio is measured at every update and logged as
        ``train/{net}_dormant_ratio``: some of ``"actor"`` (always measured, DrM's beta), ``"critic"``, ``"value"``
    :param dormant_per_layer: also log each ``nn.Linear`` layer's ratio (``train/{net}_dormant_ratio/{layer}``)
    :param redo_interval: ReDo every this many gradient updates (0: off); see :mod:`pvrw.drm.remedies`
    :param redo_tau: ReDo threshold on the layer-normalised score, ``<=`` (0.1)
    :param redo_nets: networks ReDo recycles: some of ``"actor"``, ``"critic"``, ``"value"``
    :param head_norm: LayerNorm after every hidden Linear of the actor, critic and value heads
    :param reset_interval: re-initialise ``reset_nets`` every this many agent steps (0: off)
    :param reset_nets: networks reset by ``reset_interval`` (the encoder never is)
    :param precision: ``"fp32"`` (the reference's maths) or ``"bf16"``: a deviation from the reference, for speed
        (about 2x on CPUs with AVX512-bf16/AMX and on recent GPUs): bf16 autocast of the encoder and the heads'
        forwards and backwards, with fp32 weights, optimiser state, losses, TD targets, dormant-ratio statistics and
        head output layers (Q, V, action mean; see :class:`~pvrw.drm.networks.OutputLinear`).
        Where the device has no bf16 support, a warning says so and the model runs fp32. bf16 also makes the random
        shift an exact pixel gather (``policy_kwargs`` ``aug_method="index"``) unless ``policy_kwargs`` choose
    :param reuse_cpu_memory: on the CPU under Linux/glibc, have ``malloc`` keep freed memory for reuse (process-wide,
        from the first update on; see :mod:`pvrw._malloc`): PyTorch's CPU allocator has no cache and glibc maps every
        block over 32 MiB afresh, so each update's large activations would be zero-filled by the kernel again (a
        third of an 84 px update on a 2-core CPU). No value changes; the process keeps its peak heap until it exits.
        False leaves the allocator alone (e.g. with jemalloc or tcmalloc preloaded)
    :param stats_window_size: window size for the rollout logging
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments for the policy, as SB3 spells them (``net_arch``, ``activation_fn``,
        ``features_extractor_class``, ``share_features_extractor``, ``n_critics``, ...) and DrM's (``feature_dim``,
        ``hidden_dim``, ``augment``, ...); see :class:`~pvrw.drm.policies.DrMPolicy`
    :param verbose: 0 none, 1 info (perturbation events), 2 debug
    :param seed: seed for the pseudo random generators
    :param device: device on which the code should run (``"auto"``, ``"cpu"``, ``"cuda"``)
    :param _init_setup_model: whether to build the networks at creation
    :param kwargs: refused: TD3 / SAC arguments DrM cannot honour (``policy_delay``, ``ent_coef``, ...) are named
        with the reason
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "PiegPolicy": PiegPolicy,
        "MultiInputPolicy": MultiInputPolicy,
        "PatchPolicy": PatchPolicy,
        "AttentionPoolPolicy": AttentionPoolPolicy,
        "FinetunePolicy": FinetunePolicy,
    }
    policy: DrMPolicy
    actor: Actor
    critic: Critic
    critic_target: Critic
    value_net: ValueNetwork
    reuse_cpu_memory: bool = True  # models saved before the argument existed load with the default

    def __init__(
        self,
        policy: str | type[DrMPolicy],
        env: GymEnv | str,
        variant: str = "drm",
        learning_rate: float | Schedule = 1e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 2000,
        batch_size: int = 256,
        tau: float = 0.01,
        gamma: float | None = None,
        train_freq: int | tuple[int, str] = 2,
        gradient_steps: int | None = None,
        action_noise: ActionNoise | None = None,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int | None = None,
        num_expl_steps: int | None = None,
        stddev_type: str = "awake",
        stddev_schedule: ScheduleSpec = "linear(1.0,0.1,500000)",
        stddev_clip: float = 0.3,
        dormant_threshold: float = 0.025,
        target_dormant_ratio: float = 0.2,
        dormant_temp: float = 10.0,
        dormant_perturb_interval: int = 100_000,
        min_perturb_factor: float = 0.2,
        max_perturb_factor: float | None = None,
        perturb_rate: float = 2.0,
        target_lambda: float | None = None,
        lambda_temp: float = 50.0,
        expectile: float = 0.9,
        dormant_nets: tuple[str, ...] = ("actor",),
        dormant_per_layer: bool = False,
        redo_interval: int = 0,
        redo_tau: float = 0.1,
        redo_nets: tuple[str, ...] = ("actor", "critic"),
        head_norm: bool = False,
        reset_interval: int = 0,
        reset_nets: tuple[str, ...] = ("actor", "critic", "value"),
        precision: str = "fp32",
        reuse_cpu_memory: bool = True,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        refuse_algorithm_kwargs(type(self).__name__, kwargs)
        defaults, policy_kwargs = check_options(variant, precision, stddev_type, policy_kwargs)
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            defaults["gamma"] if gamma is None else gamma,
            train_freq,
            1 if gradient_steps is None else gradient_steps,
            action_noise=action_noise,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=defaults["n_steps"] if n_steps is None else n_steps,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            sde_support=False,
            supported_action_spaces=(spaces.Box,),
            support_multi_env=True,
        )
        if gradient_steps is None:  # without an env (loading), the saved value is restored afterwards
            self.gradient_steps = self.n_envs if self.env is not None else 1
        self.variant = variant
        self.num_expl_steps = learning_starts if num_expl_steps is None else num_expl_steps
        self.stddev_type = stddev_type
        self.stddev_schedule = parse_step_schedule(stddev_schedule)
        self.stddev_clip = stddev_clip
        self.dormant_threshold = dormant_threshold
        self.target_dormant_ratio = target_dormant_ratio
        self.dormant_temp = dormant_temp
        self.dormant_perturb_interval = dormant_perturb_interval
        self.min_perturb_factor = min_perturb_factor
        self.max_perturb_factor = defaults["max_perturb_factor"] if max_perturb_factor is None else max_perturb_factor
        self.perturb_rate = perturb_rate
        self.target_lambda = defaults["target_lambda"] if target_lambda is None else target_lambda
        self.lambda_temp = lambda_temp
        self.expectile = expectile
        self.reuse_cpu_memory = reuse_cpu_memory
        self.precision = precision if precision == "fp32" or bf16_supported(self.device) else "fp32"
        if self.precision != precision:
            warnings.warn(f"{self.device} has no bf16 support: DrM runs in fp32", stacklevel=2)
        if self.precision == "bf16":  # not the reference's rounding anyway: the exact, faster random shift
            self.policy_kwargs.setdefault("aug_method", "index")
        # DrM state (saved with the model): the reference starts from dormant_ratio = 1 and no awakening.
        self.dormant_ratio = 1.0
        self.awaken_step: int | None = None
        self.perturbations: list[dict[str, float]] = []
        self._perturb_check_step = 0
        self._init_remedies(
            dormant_nets, dormant_per_layer, redo_interval, redo_tau, redo_nets, head_norm, reset_interval, reset_nets
        )
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        check_policy_kwargs(self.policy_class, self.policy_kwargs)  # type: ignore[arg-type]
        if self.replay_buffer_class is None:
            self.replay_buffer_class = self._default_replay_buffer()
        drm_buffer = issubclass(self.replay_buffer_class, (DrMReplayBuffer, DrMDictReplayBuffer))
        if drm_buffer and self.optimize_memory_usage:
            self.optimize_memory_usage = False
            if self.verbose >= 1:
                name = self.replay_buffer_class.__name__
                print(f"{name} already stores each frame once: optimize_memory_usage=True is a no-op")
        with warnings.catch_warnings():
            if "n_steps" in self.replay_buffer_kwargs:  # configured above or by the user: SB3's warning is spurious
                warnings.filterwarnings("ignore", message=r"`n_steps=\d+` is ignored")
            super()._setup_model()
        if self.variant == "drqv2":
            remove_value_net(self.policy)
        self._apply_architecture_options(self.lr_schedule(1))
        self._create_aliases()

    def _default_replay_buffer(self) -> type[ReplayBuffer]:
        buffer_class, frame_stack = default_replay_buffer(
            self.observation_space, self.policy_kwargs.get("normalize_images", True)
        )
        extra = {"n_steps": self.n_steps, "gamma": self.gamma, "frame_stack": frame_stack}
        self.replay_buffer_kwargs = {**extra, **self.replay_buffer_kwargs}
        return buffer_class

    def _create_aliases(self) -> None:
        self.actor = self.policy.actor
        self.critic = self.policy.critic
        self.critic_target = self.policy.critic_target
        self.value_net = self.policy.value_net

    # --- acting --------------------------------------------------------------------------------------------------

    def _sample_action(
        self,
        learning_starts: int,
        action_noise: ActionNoise | None = None,
        n_envs: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Uniform random actions for the first ``num_expl_steps`` steps, then ``mean + std * N(0, 1)`` clamped."""
        if self.num_timesteps < self.num_expl_steps:
            unscaled_action = np.array([self.action_space.sample() for _ in range(n_envs)])
        else:
            assert self._last_obs is not None, "self._last_obs was not set"
            unscaled_action, _ = self.predict(self._last_obs, deterministic=False)
        scaled_action = self.policy.scale_action(unscaled_action)
        if action_noise is not None:
            scaled_action = np.clip(scaled_action + action_noise(), -1, 1)
        return self.policy.unscale_action(scaled_action), scaled_action

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        The actor mean (``deterministic=True``, what evaluation uses) or an exploration action with the current
        :meth:`exploration_std`. See SB3's ``BaseAlgorithm.predict``.
        """
        self.policy.exploration_std = self.exploration_std()
        return super().predict(observation, state, episode_start, deterministic)

    # --- training ------------------------------------------------------------------------------------------------

    def _replay_buffer_ready(self) -> bool:
        # The reference-rule DrMReplayBuffer samples complete n-step windows only. A model loaded without its replay
        # buffer is past learning_starts with an empty buffer: wait for the first window instead of failing.
        buffer = self.replay_buffer
        if isinstance(buffer, (DrMReplayBuffer, DrMDictReplayBuffer)) and buffer.n_step_rule == "reference":
            return buffer.size() >= buffer.n_steps
        return True

    def train(self, gradient_steps: int, batch_size: int = 256) -> None:
        if not self._replay_buffer_ready():
            return
        if self.reuse_cpu_memory and self.device.type == "cpu":
            keep_freed_memory()
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizers)
        metrics: dict[str, list[float]] = defaultdict(list)

        def sample() -> ReplayBufferSamples:
            return self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]

        for index in range(gradient_steps):
            self._maybe_reset(self.num_timesteps)
            self._maybe_perturb(self.num_timesteps)
            for key, value in self._update(sample(), self.num_timesteps).items():
                metrics[key].append(value)
            self._maybe_redo(self._n_updates + index + 1, sample)
        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        for key, values in metrics.items():
            self.logger.record(f"train/{key}", float(np.mean(values)))
        self._record_remedies()
        if self.variant == "drqv2":  # no perturbation, no awakening
            return
        self.logger.record("train/perturb_factor", self.perturb_factor())
        self.logger.record("train/n_perturbations", len(self.perturbations))
        if self.perturbations:
            self.logger.record("train/last_perturb_step", self.perturbations[-1]["step"])
            self.logger.record("train/last_perturb_factor", self.perturbations[-1]["factor"])
        if self.awaken_step is not None:
            self.logger.record("train/awaken_step", self.awaken_step)

    # --- SB3 plumbing --------------------------------------------------------------------------------------------

    def learn(
        self: SelfDrM,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "DrM",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfDrM:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
