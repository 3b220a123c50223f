"""DrM's dormant-ratio mechanisms on the agent: exploration std, exploitation weight and shrink-and-perturb.

The formulas are in :mod:`pvrw.drm.dormant`; this mixin applies them to the agent's state (``dormant_ratio``,
``awaken_step``, ``num_timesteps``) and networks. It is :class:`~pvrw.drm.drm.DrM`'s, split from the SB3 algorithm
(acting, the update step, saving) only to keep modules short.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvrw.drm.dormant import dormant_lambda, dormant_stddev, perturb, perturb_factor
from pvrw.drm.networks import Actor, Critic, ValueNetwork
from pvrw.drm.schedules import StepSchedule

if TYPE_CHECKING:
    from pvrw.drm.policies import DrMPolicy


class DormantMechanisms:
    """
    Exploration (``exploration_std``), exploitation (``exploitation_lambda``) and perturbation (``perturb``) driven by
    the actor's dormant ratio. Mixed into :class:`~pvrw.drm.drm.DrM`, whose constructor sets the attributes below.
    """

    # hyper-parameters (DrM's constructor arguments)
    variant: str
    stddev_type: str
    stddev_schedule: StepSchedule
    target_dormant_ratio: float
    dormant_temp: float
    dormant_perturb_interval: int
    min_perturb_factor: float
    max_perturb_factor: float
    perturb_rate: float
    target_lambda: float
    lambda_temp: float
    # state, saved with the model
    dormant_ratio: float
    awaken_step: int | None
    perturbations: list[dict[str, float]]
    _perturb_check_step: int
    # from the SB3 algorithm
    num_timesteps: int
    verbose: int
    policy: DrMPolicy
    actor: Actor
    critic: Critic
    critic_target: Critic
    value_net: ValueNetwork

    def exploration_std(self, step: int | None = None) -> float:
        """
        DrM ``stddev(step)``: ``sigma(beta)`` before awakening; after it, ``max(sigma(beta), schedule(step -
        awaken_step))`` (``stddev_type="awake"``), so the linear schedule restarts at the awakening step.

        :param step: agent step (default: ``num_timesteps``)
        :return: the exploration std
        """
        step = self.num_timesteps if step is None else step
        sigma = dormant_stddev(self.dormant_ratio, self.target_dormant_ratio, self.dormant_temp)
        if self.stddev_type == "dormant" or self.awaken_step is None:
            return sigma
        return max(sigma, self.stddev_schedule(step - self.awaken_step))

    def exploitation_lambda(self) -> float:
        """Weight of the value net in the TD target: dormant-dependent (``drm``) or constant (``drm_mw``)."""
        if self.variant == "drm_mw":
            return self.target_lambda
        return dormant_lambda(self.dormant_ratio, self.target_lambda, self.target_dormant_ratio, self.lambda_temp)

    def perturb_factor(self) -> float:
        """The current perturbation factor ``clip(1 - perturb_rate * beta, min, max)``."""
        return perturb_factor(self.dormant_ratio, self.perturb_rate, self.min_perturb_factor, self.max_perturb_factor)

    def perturb(self) -> float:
        """
        Shrink-and-perturb actor, critic, target critic (its own fresh init), encoder (no Linear layer in the DrQ-v2
        encoder: only its optimizer is reset; the PIE-G head's Linear is perturbed) and value net, resetting the Adam
        states, in the reference order.

        :return: the factor used
        """
        factor = self.perturb_factor()
        policy = self.policy
        perturb(self.actor, self.actor.optimizer, factor)
        perturb(self.critic, self.critic.optimizer, factor)
        perturb(self.critic_target, self.critic.optimizer, factor)
        perturb(policy.features_extractor, policy.encoder_optimizer, factor)
        if policy.actor_features_extractor is not None:  # share_features_extractor=False (Adam state reset above)
            perturb(policy.actor_features_extractor, None, factor)
        perturb(self.value_net, self.value_net.optimizer, factor)
        self.perturbations.append(dict(step=self.num_timesteps, factor=factor, dormant_ratio=self.dormant_ratio))
        if self.verbose >= 1:
            print(
                f"DrM perturbation at step {self.num_timesteps}: factor {factor:.3f}, dormant ratio {self.dormant_ratio:.3f}"
            )
        return factor

    def _maybe_perturb(self, step: int) -> None:
        # Reference: ``step % dormant_perturb_interval == 0`` at an update. With several envs or another train_freq
        # updates may skip that exact step, so perturb when a multiple has been crossed since the last check.
        previous = self._perturb_check_step if step >= self._perturb_check_step else 0  # num_timesteps was reset
        if step // self.dormant_perturb_interval > previous // self.dormant_perturb_interval:
            self.perturb()
        self._perturb_check_step = step
