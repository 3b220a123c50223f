"""The dormant-ratio remedies of :mod:`pvrw.drm.remedies` as DrM options (a mixin of :class:`~pvrw.drm.DrM`).

Every option is off by default, so that a default DrM is the reference. Events are kept on the model (saved with
it) and logged under ``train/``: ``{net}_dormant_ratio`` (and ``{net}_dormant_ratio/{layer}``), ``n_redo``,
``redo_recycled_{net}``, ``n_resets``, ``last_reset_step``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch as th

from pvrw.drm.remedies import (
    NETWORKS,
    add_head_norm,
    check_networks,
    dormant_masks,
    dormant_summary,
    rebuild_optimizers_and_target,
    redo,
    reinitialise,
)

if TYPE_CHECKING:
    from stable_baselines3.common.logger import Logger

    from pvrw.drm.policies import DrMPolicy


class DormantRemedies:
    """Measurement of more networks, ReDo, LayerNorm heads and periodic resets; see :mod:`pvrw.drm.remedies`."""

    # options (DrM's constructor arguments)
    dormant_nets: tuple[str, ...]
    dormant_per_layer: bool
    redo_interval: int
    redo_tau: float
    redo_nets: tuple[str, ...]
    head_norm: bool
    reset_interval: int
    reset_nets: tuple[str, ...]
    # state, saved with the model
    dormant_ratios: dict[str, float]
    redo_events: list[dict[str, Any]]
    resets: list[dict[str, Any]]
    _reset_check_step: int
    # from the algorithm
    policy: DrMPolicy
    dormant_threshold: float
    dormant_ratio: float
    num_timesteps: int
    batch_size: int
    verbose: int
    logger: Logger

    def _init_remedies(
        self,
        dormant_nets: Any,
        dormant_per_layer: bool,
        redo_interval: int,
        redo_tau: float,
        redo_nets: Any,
        head_norm: bool,
        reset_interval: int,
        reset_nets: Any,
    ) -> None:
        if redo_interval < 0 or reset_interval < 0:
            raise ValueError("redo_interval and reset_interval count updates / agent steps: use 0 (off) or more")
        self.dormant_nets = check_networks(dormant_nets, "dormant_nets")
        self.dormant_per_layer = dormant_per_layer
        self.redo_interval, self.redo_tau = redo_interval, redo_tau
        self.redo_nets = check_networks(redo_nets, "redo_nets")
        self.head_norm = head_norm
        self.reset_interval = reset_interval
        self.reset_nets = check_networks(reset_nets, "reset_nets")
        self.dormant_ratios = {}
        self.redo_events = []
        self.resets = []
        self._reset_check_step = 0

    def _network(self, name: str) -> Any:
        return getattr(self.policy, NETWORKS[name])

    def _apply_architecture_options(self, learning_rate: float) -> None:
        """``head_norm``: insert the LayerNorms, then rebuild the target critic and the optimizers."""
        if self.head_norm and sum(add_head_norm(self._network(n)) for n in NETWORKS if self._network(n) is not None):
            rebuild_optimizers_and_target(self.policy, learning_rate)

    # --- measuring (called by the update, on its batch) -------------------------------------------------------

    def _dormant_metrics(
        self, obs: th.Tensor, actions: th.Tensor, actor_obs: th.Tensor | None = None
    ) -> dict[str, float]:
        """Dormant ratios of the networks in ``dormant_nets`` beyond the actor's (and per layer if asked); the actor
        sees ``actor_obs`` when it has an encoder of its own (default: ``obs``)."""
        metrics: dict[str, float] = {}
        for name in self.dormant_nets:
            network = self._network(name)
            if network is None or (name == "actor" and not self.dormant_per_layer):
                continue  # the actor's ratio is DrM's own, measured by the update
            actor_input = obs if actor_obs is None else actor_obs
            inputs = (obs, actions) if name == "critic" else (actor_input,) if name == "actor" else (obs,)
            ratio, layers = dormant_summary(
                dormant_masks(network, *inputs, threshold=self.dormant_threshold), self.dormant_per_layer
            )
            if name != "actor":
                metrics[f"{name}_dormant_ratio"] = ratio
            metrics.update({f"{name}_dormant_ratio/{layer}": value for layer, value in layers.items()})
        self.dormant_ratios = {"actor": self.dormant_ratio}
        for name in NETWORKS:
            if f"{name}_dormant_ratio" in metrics:
                self.dormant_ratios[name] = metrics[f"{name}_dormant_ratio"]
        return metrics

    # --- events (called by DrM.train) -------------------------------------------------------------------------

    def _maybe_reset(self, step: int) -> None:
        # as the perturbation: when a multiple of reset_interval has been crossed since the last check
        if not self.reset_interval:
            return
        previous = self._reset_check_step if step >= self._reset_check_step else 0
        if step // self.reset_interval > previous // self.reset_interval:
            self.reset_networks()
        self._reset_check_step = step

    def reset_networks(self) -> None:
        """Re-initialise the networks in ``reset_nets`` with fresh optimizer state; the target critic is copied from
        the new critic. The encoder and the replay buffer are kept."""
        for name in self.reset_nets:
            network = self._network(name)
            if network is None:
                continue
            reinitialise(network)
            network.optimizer.state.clear()
            if name == "critic":
                self.policy.critic_target.load_state_dict(network.state_dict())
        self.resets.append(dict(step=self.num_timesteps, nets=list(self.reset_nets)))
        if self.verbose >= 1:
            print(f"reset of {', '.join(self.reset_nets)} at step {self.num_timesteps}")

    def _maybe_redo(self, n_updates: int, sample: Any) -> None:
        """ReDo after update number ``n_updates`` when it is a multiple of ``redo_interval``; ``sample()`` gives a
        fresh replay batch, encoded (augmented) as the update's."""
        if not self.redo_interval or n_updates % self.redo_interval:
            return
        replay_data = sample()
        with th.no_grad():
            obs, actor_obs = self.policy.encode_both(replay_data.observations, augment=True)
        recycled = {}
        for name in self.redo_nets:
            network = self._network(name)
            if network is None:
                continue
            inputs = (obs, replay_data.actions) if name == "critic" else (actor_obs,) if name == "actor" else (obs,)
            recycled[name] = sum(redo(network, network.optimizer, *inputs, tau=self.redo_tau).values())
        self.redo_events.append(dict(update=n_updates, step=self.num_timesteps, recycled=recycled))

    def _record_remedies(self) -> None:
        if self.redo_interval:
            self.logger.record("train/n_redo", len(self.redo_events))
            if self.redo_events:
                for name, count in self.redo_events[-1]["recycled"].items():
                    self.logger.record(f"train/redo_recycled_{name}", count)
        if self.reset_interval:
            self.logger.record("train/n_resets", len(self.resets))
            if self.resets:
                self.logger.record("train/last_reset_step", self.resets[-1]["step"])
