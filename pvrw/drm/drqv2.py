"""DrQ-v2 (Yarats et al. 2021, facebookresearch/drqv2 at c0c650b) as ``DrM(variant="drqv2")``: the ablation baseline.

DrM without its dormant-ratio mechanisms, as ``drqv2.py`` defines the agent: no value net and no blended target
(``y = R^(n) + gamma^n min(Q1', Q2')(s', a')``), no perturbation, no awakening, and the exploration std is the
schedule at the agent step (``linear(1.0,0.1,500000)``, the DMC "medium" value, by default). Everything else is
shared with DrM: encoder (or PVR head), actor, critic (MLP Q-heads, ``agents/drm.py``'s, which are DrQ-v2's),
replay, n = 3, gamma = 0.99, lr 1e-4, batch 256, tau 0.01, one update every 2 agent steps, 2000 exploration steps,
noise clip 0.3. The actor's dormant ratio is still measured and logged, as the DrM repository's own
``agents/drqv2.py`` does (threshold 0.025), so that the two agents can be compared on it. DrM's mechanism arguments
(``stddev_type``, ``target_dormant_ratio``, ``dormant_temp``, the perturbation and lambda arguments, ``expectile``)
are ignored; the remedies of :mod:`pvrw.drm.remedies` work as with DrM (the value net aside).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stable_baselines3.common.type_aliases import ReplayBufferSamples


if TYPE_CHECKING:
    from pvrw.drm.policies import DrMPolicy

DRQV2 = "drqv2"

#: DrQ-v2's values of the arguments DrM's variants set (``cfgs/config.yaml``); lambda and the perturbation are unused
DRQV2_DEFAULTS: dict[str, Any] = dict(n_steps=3, gamma=0.99, target_lambda=0.0, max_perturb_factor=1.0)


def network_variant(variant: str) -> str:
    """The policy (network) variant of an algorithm variant: DrQ-v2's networks are ``agents/drm.py``'s."""
    return "drm" if variant == DRQV2 else variant


def remove_value_net(policy: DrMPolicy) -> None:
    """Drop the value net and its optimizer from a built policy (DrQ-v2 has none)."""
    policy.value_net = None  # type: ignore[assignment]


class DrQv2Variant:
    """
    ``variant="drqv2"``: overrides DrM's update, exploration std and perturbation with DrQ-v2's. Mixed into
    :class:`~pvrw.drm.DrM` in front of its DrM mixins; every other variant goes through to them.
    """

    variant: str
    num_timesteps: int
    stddev_schedule: Any
    dormant_threshold: float
    dormant_ratio: float
    tau: float
    policy: DrMPolicy

    def exploration_std(self, step: int | None = None) -> float:
        """DrQ-v2: ``stddev_schedule(step)``; DrM: see :meth:`DormantMechanisms.exploration_std`."""
        if self.variant != DRQV2:
            return super().exploration_std(step)  # type: ignore[misc]
        return self.stddev_schedule(self.num_timesteps if step is None else step)

    def exploitation_lambda(self) -> float:
        """DrQ-v2 has no value net in its target: 0."""
        return 0.0 if self.variant == DRQV2 else super().exploitation_lambda()  # type: ignore[misc]

    def perturb(self) -> float:
        """DrM's shrink-and-perturb; DrQ-v2 has none."""
        if self.variant == DRQV2:
            raise RuntimeError("DrQ-v2 (variant='drqv2') has no perturbation; use variant='drm' or 'drm_mw'")
        return super().perturb()  # type: ignore[misc]

    def _maybe_perturb(self, step: int) -> None:
        if self.variant != DRQV2:
            super()._maybe_perturb(step)  # type: ignore[misc]

    def _update(self, replay_data: ReplayBufferSamples, step: int) -> dict[str, float]:
        """DrQ-v2's ``update``: encode, critic (+ encoder), actor, target EMA; the actor's dormant ratio is logged."""
        if self.variant != DRQV2:
            return super()._update(replay_data, step)  # type: ignore[misc]
        obs, actor_obs, next_obs, next_actor_obs, actor_mean = self._encode_and_act(replay_data)  # type: ignore[attr-defined]
        std = self.exploration_std(step)
        metrics = dict(actor_dormant_ratio=self.dormant_ratio, stddev=std)
        metrics["batch_reward"] = replay_data.rewards.mean().item()
        metrics.update(self._dormant_metrics(obs.detach(), replay_data.actions, actor_obs.detach()))  # type: ignore[attr-defined]
        metrics.update(
            self._update_critic(obs, next_obs, replay_data, std, 0.0, next_actor_obs=next_actor_obs)  # type: ignore[attr-defined]
        )
        metrics.update(self._update_actor(obs.detach(), actor_mean, std))  # type: ignore[attr-defined]
        self._update_target()  # type: ignore[attr-defined]
        return metrics
