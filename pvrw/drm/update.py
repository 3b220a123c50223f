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
from pvrw.drm.networks import Actor, Critic, ValueNetwork, min_q, sample_action

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
        # actor_obs: obs.detach() with DrM's shared encoder, the actor's own encoder's features otherwise
        obs, actor_obs = policy.encode_both(replay_data.observations, augment=True)
        with th.no_grad():
            next_obs, next_actor_obs = policy.encode_both(replay_data.next_observations, augment=True)

        self.dormant_ratio = dormant_ratio(self.actor, actor_obs.detach(), threshold=self.dormant_threshold)
        awakening_allowed = self.variant == "drm_mw" or step > self.num_expl_steps
        if self.awaken_step is None and awakening_allowed and self.dormant_ratio < self.target_dormant_ratio:
            self.awaken_step = step
        std = self.exploration_std(step)
        lambda_ = self.exploitation_lambda()
        metrics = dict(actor_dormant_ratio=self.dormant_ratio, stddev=std, batch_reward=replay_data.rewards.mean().item())
        metrics["lambda"] = lambda_
        metrics.update(self._dormant_metrics(obs.detach(), replay_data.actions, actor_obs.detach()))  # type: ignore[attr-defined]
        metrics.update(self._update_value(obs.detach(), replay_data.actions))
        metrics.update(self._update_critic(obs, next_obs, replay_data, std, lambda_, next_actor_obs))
        metrics.update(self._update_actor(obs.detach(), std, actor_obs))
        polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
        return metrics

    def _update_value(self, obs: th.Tensor, actions: th.Tensor) -> dict[str, float]:
        # Expectile regression of V(s) on min(Q1, Q2)(s, a) of the online critic (IQL-style). The reference lets these
        # Q values carry gradients into the critic and clears them before the critic step: no_grad is equivalent.
        with th.no_grad():
            q = min_q(self.critic(obs, actions))
        error = self.value_net(obs) - q
        weight = th.where(error > 0, 1.0 - self.expectile, self.expectile)
        value_loss = (weight * error.pow(2)).mean()
        self.value_net.optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_net.optimizer.step()
        return dict(value_loss=value_loss.item())

    def _update_critic(
        self,
        obs: th.Tensor,
        next_obs: th.Tensor,
        replay_data: ReplayBufferSamples,
        std: float,
        lambda_: float,
        next_actor_obs: th.Tensor | None = None,
    ) -> dict[str, float]:
        # y = R^(n) + gamma^n [lambda V(s') + (1 - lambda) min(Q1', Q2')(s', a')], a' ~ pi(s') with noise clipped.
        # next_actor_obs: the actor's features of s' when it has its own encoder (share_features_extractor=False)
        with th.no_grad():
            actor_input = next_obs if next_actor_obs is None else next_actor_obs
            next_actions = sample_action(self.actor(actor_input), std, clip=self.stddev_clip)
            target_v = min_q(self.critic_target(next_obs, next_actions))
            if self.value_net is not None:  # DrQ-v2 (variant="drqv2") has no value net: y = R + gamma^n min Q'
                target_v = lambda_ * self.value_net(next_obs) + (1.0 - lambda_) * target_v
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            target_q = replay_data.rewards + (1.0 - replay_data.dones) * discounts * target_v
        q_values = self.critic(obs, replay_data.actions)
        critic_loss = sum(F.mse_loss(q, target_q) for q in q_values)
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
            **{f"critic_q{index}": q.mean().item() for index, q in enumerate(q_values[:2], start=1)},
            critic_target_q=target_q.mean().item(),
        )

    def _update_actor(self, obs: th.Tensor, std: float, actor_obs: th.Tensor | None = None) -> dict[str, float]:
        # obs: the critic's (detached) features; actor_obs: the actor's own encoder's, if any
        actions = sample_action(self.actor(obs if actor_obs is None else actor_obs), std, clip=self.stddev_clip)
        actor_loss = -min_q(self.critic(obs, actions)).mean()
        self.actor.optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor.optimizer.step()
        return dict(actor_loss=actor_loss.item())
