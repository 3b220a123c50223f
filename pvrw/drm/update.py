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

from pvrw.drm.dormant import dormant_ratio_of, linear_outputs
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
    precision: str
    device: th.device
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
        obs, actor_obs, next_obs, next_actor_obs, actor_mean = self._encode_and_act(replay_data)
        awakening_allowed = self.variant == "drm_mw" or step > self.num_expl_steps
        if self.awaken_step is None and awakening_allowed and self.dormant_ratio < self.target_dormant_ratio:
            self.awaken_step = step
        std = self.exploration_std(step)
        lambda_ = self.exploitation_lambda()
        metrics = dict(actor_dormant_ratio=self.dormant_ratio, stddev=std, batch_reward=replay_data.rewards.mean().item())
        metrics["lambda"] = lambda_
        metrics.update(self._dormant_metrics(obs.detach(), replay_data.actions, actor_obs.detach()))  # type: ignore[attr-defined]
        # Q(s, a) of the online critic: the value regression's target and the critic loss's prediction. Without
        # dropout (variant "drm") both are one forward, as the critic does not change in between; with dropout
        # ("drm_mw") the reference draws two masks, so the forwards stay separate.
        q_values = None if self._critic_has_dropout() else self._critic_q(obs, replay_data.actions)
        metrics.update(self._update_value(obs.detach(), replay_data.actions, q_values))
        metrics.update(self._update_critic(obs, next_obs, replay_data, std, lambda_, q_values, next_actor_obs))
        metrics.update(self._update_actor(obs.detach(), actor_mean, std))
        self._update_target()
        return metrics

    def _encode_and_act(
        self, replay_data: ReplayBufferSamples
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """
        Features of the shifted batch (critic's and actor's, for s and s'), the actor's mean on s, and the actor's
        dormant ratio (set on ``self``) measured on that same forward.

        With DrM's shared encoder the actor's features are the critic's, detached; with an encoder of its own
        (``share_features_extractor=False``) they carry its gradients. The reference measures the dormant ratio with a
        separate forward of the same (not yet updated) actor on the same detached batch, so its Linear outputs are
        exactly these; the actor has no random layer, so the random stream is unchanged.
        """
        policy = self.policy
        with self._autocast():
            obs, actor_obs = policy.encode_both(replay_data.observations, augment=True)
            with th.no_grad():
                next_obs, next_actor_obs = policy.encode_both(replay_data.next_observations, augment=True)
            with linear_outputs(self.actor) as outputs:
                actor_mean = self.actor(actor_obs)
        self.dormant_ratio = dormant_ratio_of(outputs, threshold=self.dormant_threshold)
        return obs, actor_obs, next_obs, next_actor_obs, actor_mean

    def _autocast(self) -> th.autocast:
        """bf16 autocast of the encoder and the heads when ``precision="bf16"`` (weights, optimiser state, losses and
        dormant statistics stay fp32); a no-op context in fp32."""
        return th.autocast(self.device.type, dtype=th.bfloat16, enabled=self.precision == "bf16")

    def _critic_has_dropout(self) -> bool:
        return any(isinstance(module, th.nn.Dropout) and module.p > 0 for module in self.critic.modules())

    def _update_target(self) -> None:
        """SB3's ``polyak_update`` of the target critic, one call for all tensors."""
        online = [p.detach() for p in self.critic.parameters()]
        target = [p.detach() for p in self.critic_target.parameters()]
        th._foreach_mul_(target, 1.0 - self.tau)
        th._foreach_add_(target, online, alpha=self.tau)

    def _critic_q(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        with self._autocast():
            q_values = self.critic(obs, actions)
        return tuple(q.float() for q in q_values)

    def _update_value(
        self, obs: th.Tensor, actions: th.Tensor, q_values: tuple[th.Tensor, ...] | None = None
    ) -> dict[str, float]:
        # Expectile regression of V(s) on min(Q1, Q2)(s, a) of the online critic (IQL-style). The reference lets these
        # Q values carry gradients into the critic and clears them before the critic step: detaching is equivalent.
        if q_values is None:
            with th.no_grad():
                q_values = self._critic_q(obs, actions)
        with self._autocast():
            value = self.value_net(obs)
        error = value.float() - min_q(q_values).detach()
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
        q_values: tuple[th.Tensor, ...] | None = None,
        next_actor_obs: th.Tensor | None = None,
    ) -> dict[str, float]:
        # y = R^(n) + gamma^n [lambda V(s') + (1 - lambda) min(Q1', Q2')(s', a')], a' ~ pi(s') with noise clipped.
        # q_values: Q(s, a) already computed this update; next_actor_obs: the actor's features of s' when it has its
        # own encoder (share_features_extractor=False)
        with th.no_grad():
            with self._autocast():
                next_mean = self.actor(next_obs if next_actor_obs is None else next_actor_obs)
                next_actions = sample_action(next_mean.float(), std, clip=self.stddev_clip)
                target_v = min_q([q.float() for q in self.critic_target(next_obs, next_actions)])
                if self.value_net is not None:  # DrQ-v2 (variant="drqv2") has no value net: y = R + gamma^n min Q'
                    target_v = lambda_ * self.value_net(next_obs).float() + (1.0 - lambda_) * target_v
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            target_q = replay_data.rewards + (1.0 - replay_data.dones) * discounts * target_v
        if q_values is None:
            q_values = self._critic_q(obs, replay_data.actions)
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

    def _update_actor(self, obs: th.Tensor, mean: th.Tensor, std: float) -> dict[str, float]:
        # obs: the critic's (detached) features; mean: the actor's forward from the top of the update (same weights,
        # see _encode_and_act), on its own encoder's features when it has one.
        actions = sample_action(mean.float(), std, clip=self.stddev_clip)
        # The critic only passes gradients to the actions: without its weight gradients (which the reference computes
        # and the next critic step discards) the backward skips the critic's trunk and the heads' weight products.
        self.critic.requires_grad_(False)
        try:
            q_values = self._critic_q(obs, actions)
        finally:
            self.critic.requires_grad_(True)
        actor_loss = -min_q(q_values).mean()
        self.actor.optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor.optimizer.step()
        return dict(actor_loss=actor_loss.item())
