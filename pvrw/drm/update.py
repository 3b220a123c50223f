"""One DrM update, the reference ``DrMAgent.update`` step for step: encode, dormant ratio, value, critic (+ encoder),
actor, target EMA.

A mixin of :class:`~pvrw.drm.drm.DrM`, split from the SB3 algorithm (acting, the training loop, saving) only to keep
modules short; the dormant-ratio mechanisms it calls are in :mod:`pvrw.drm.mechanisms`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch as th
import torch.nn.functional as F
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update

from pvrw.drm.dormant import dormant_ratio
from pvrw.drm.networks import Actor, Critic, ValueNetwork, sample_action

if TYPE_CHECKING:
    from pvrw.drm.policies import DrMPolicy


class DrMUpdate:
    """
    The gradient step of DrM. Mixed into :class:`~pvrw.drm.drm.DrM`, whose constructor sets the attributes below and
    whose :class:`~pvrw.drm.mechanisms.DormantMechanisms` give ``exploration_std`` and ``exploitation_lambda``.
    """

    # hyper-parameters (DrM's constructor arguments)
    variant: str
    num_expl_steps: int
    dormant_threshold: float
    target_dormant_ratio: float
    stddev_clip: float
    expectile: float
    gamma: float
    tau: float
    # state, saved with the model
    dormant_ratio: float
    awaken_step: int | None
    # networks
    policy: DrMPolicy
    actor: Actor
    critic: Critic
    critic_target: Critic
    value_net: ValueNetwork | None

    def _update(self, replay_data: ReplayBufferSamples, step: int) -> dict[str, float]:
        """One reference ``DrMAgent.update``: encode, dormant ratio, value, critic (+ encoder), actor, target EMA."""
        policy = self.policy
        obs = policy.encode(replay_data.observations, augment=True)
        with th.no_grad():
            next_obs = policy.encode(replay_data.next_observations, augment=True)

        self.dormant_ratio = dormant_ratio(self.actor, obs.detach(), threshold=self.dormant_threshold)
        awakening_allowed = self.variant == "drm_mw" or step > self.num_expl_steps
        if self.awaken_step is None and awakening_allowed and self.dormant_ratio < self.target_dormant_ratio:
            self.awaken_step = step
        std = self.exploration_std(step)
        lambda_ = self.exploitation_lambda()
        metrics = dict(actor_dormant_ratio=self.dormant_ratio, stddev=std, batch_reward=replay_data.rewards.mean().item())
        metrics["lambda"] = lambda_
        metrics.update(self._dormant_metrics(obs.detach(), replay_data.actions))  # type: ignore[attr-defined]
        metrics.update(self._update_value(obs.detach(), replay_data.actions))
        metrics.update(self._update_critic(obs, next_obs, replay_data, std, lambda_))
        metrics.update(self._update_actor(obs.detach(), std))
        polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
        return metrics

    def _update_value(self, obs: th.Tensor, actions: th.Tensor) -> dict[str, float]:
        # Expectile regression of V(s) on min(Q1, Q2)(s, a) of the online critic (IQL-style). The reference lets these
        # Q values carry gradients into the critic and clears them before the critic step: no_grad is equivalent.
        with th.no_grad():
            q1, q2 = self.critic(obs, actions)
        error = self.value_net(obs) - th.min(q1, q2)
        weight = th.where(error > 0, 1.0 - self.expectile, self.expectile)
        value_loss = (weight * error.pow(2)).mean()
        self.value_net.optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_net.optimizer.step()
        return dict(value_loss=value_loss.item())

    def _update_critic(
        self, obs: th.Tensor, next_obs: th.Tensor, replay_data: ReplayBufferSamples, std: float, lambda_: float
    ) -> dict[str, float]:
        # y = R^(n) + gamma^n [lambda V(s') + (1 - lambda) min(Q1', Q2')(s', a')], a' ~ pi(s') with noise clipped.
        with th.no_grad():
            next_actions = sample_action(self.actor(next_obs), std, clip=self.stddev_clip)
            target_q1, target_q2 = self.critic_target(next_obs, next_actions)
            target_v = th.min(target_q1, target_q2)
            if self.value_net is not None:  # DrQ-v2 (variant="drqv2") has no value net: y = R + gamma^n min Q'
                target_v = lambda_ * self.value_net(next_obs) + (1.0 - lambda_) * target_v
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            target_q = replay_data.rewards + (1.0 - replay_data.dones) * discounts * target_v
        q1, q2 = self.critic(obs, replay_data.actions)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        encoder_optimizer = self.policy.encoder_optimizer
        if encoder_optimizer is not None:
            encoder_optimizer.zero_grad(set_to_none=True)
        self.critic.optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic.optimizer.step()
        if encoder_optimizer is not None:
            encoder_optimizer.step()
        return dict(
            critic_loss=critic_loss.item(),
            critic_q1=q1.mean().item(),
            critic_q2=q2.mean().item(),
            critic_target_q=target_q.mean().item(),
        )

    def _update_actor(self, obs: th.Tensor, std: float) -> dict[str, float]:
        actions = sample_action(self.actor(obs), std, clip=self.stddev_clip)
        q1, q2 = self.critic(obs, actions)
        actor_loss = -th.min(q1, q2).mean()
        self.actor.optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor.optimizer.step()
        return dict(actor_loss=actor_loss.item())
