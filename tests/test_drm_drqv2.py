"""The DrQ-v2 baseline, DrM(variant="drqv2"): reference sizes and hyper-parameters, and one update against its
definition (facebookresearch/drqv2 drqv2.py, reference/drqv2.md section 2)."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch as th
import torch.nn.functional as F
from test_drm_run import FAST, feature_env

from pvrw.drm import DrM, trainable_parameter_counts


class PixelEnv(gym.Env):
    """DrQ-v2's observation and action shapes: (9, 84, 84) uint8 frame stacks, 4-d actions (Meta-World)."""

    observation_space = gym.spaces.Box(0, 255, (9, 84, 84), np.uint8)
    action_space = gym.spaces.Box(-1, 1, (4,), np.float32)

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def test_reference_sizes_and_hyper_parameters():
    model = DrM("CnnPolicy", PixelEnv(), variant="drqv2", buffer_size=1000)
    # drqv2.py: encoder, actor and critic of DrQ-v2 at 84 px, frame stack 3, 4 actions; no value net
    counts = trainable_parameter_counts(model)
    assert counts == {"encoder": 30_368, "actor": 3_066_074, "critic": 4_174_040, "value_net": 0, "total": 7_270_482}
    assert counts == trainable_parameter_counts((9, 84, 84), variant="drqv2")
    assert model.value_net is None and model.policy.value_net is None
    assert len(model.policy.optimizers) == 3  # encoder, actor, critic (drqv2.py L147-150)
    assert [type(m).__name__ for m in model.critic.Q1] == ["Linear", "ReLU", "Linear", "ReLU", "OutputLinear"]
    # cfgs/config.yaml: n-step 3, discount 0.99, lr 1e-4, batch 256, tau 0.01, update every 2 steps, 2000
    # exploration steps = 4000 seed frames / action repeat 2, noise clip 0.3, feature_dim 50, hidden_dim 1024
    assert (model.n_steps, model.gamma, model.learning_rate, model.batch_size, model.tau) == (3, 0.99, 1e-4, 256, 0.01)
    assert (model.train_freq.frequency, model.learning_starts, model.num_expl_steps) == (2, 2000, 2000)
    assert (model.stddev_clip, model.policy.feature_dim, model.policy.hidden_dim) == (0.3, 50, 1024)
    # the std is the schedule at the agent step, whatever the dormant ratio: linear(1.0,0.1,500000)
    for ratio in (0.0, 0.9):
        model.dormant_ratio = ratio
        assert [model.exploration_std(t) for t in (0, 250_000, 500_000, 10**6)] == pytest.approx([1, 0.55, 0.1, 0.1])
    assert model.exploitation_lambda() == 0.0


def test_one_update_follows_the_definition():
    model = DrM("MlpPolicy", feature_env(), variant="drqv2", seed=0, **FAST)
    model.learn(40)  # fills the buffer and moves the networks away from their init
    before = copy.deepcopy(model.policy)  # optimizers included (deep-copied with the networks they hold)
    batch = model.replay_buffer.sample(8)
    step = 300_000
    th.manual_seed(7)
    metrics = model._update(batch, step)

    # the definition, written out: y = R + gamma_eff * min(Q1', Q2')(s', a'), a' = clamp(mu(s') + clip(std eps))
    th.manual_seed(7)
    policy, std = before, 1.0 + (0.1 - 1.0) * step / 500_000
    obs, next_obs = (policy.encode(o) for o in (batch.observations, batch.next_observations))

    def act(mean):
        noise = th.clamp(th.randn_like(mean) * std, -0.3, 0.3)
        action = mean + noise
        return action - action.detach() + th.clamp(action, -1 + 1e-6, 1 - 1e-6).detach()

    with th.no_grad():
        target = batch.rewards + (1 - batch.dones) * batch.discounts * th.min(*policy.critic_target(next_obs, act(
            policy.actor(next_obs))))  # fmt: skip
    q1, q2 = policy.critic(obs, batch.actions)
    critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
    policy.critic.optimizer.zero_grad()
    critic_loss.backward()
    policy.critic.optimizer.step()
    actor_loss = -th.min(*policy.critic(obs.detach(), act(policy.actor(obs.detach())))).mean()
    policy.actor.optimizer.zero_grad()
    actor_loss.backward()
    policy.actor.optimizer.step()
    with th.no_grad():
        for p, p_target in zip(policy.critic.parameters(), policy.critic_target.parameters()):
            p_target.mul_(0.99).add_(0.01 * p)

    assert metrics["critic_loss"] == pytest.approx(critic_loss.item(), rel=1e-6)
    assert metrics["critic_target_q"] == pytest.approx(target.mean().item(), rel=1e-6)
    assert metrics["actor_loss"] == pytest.approx(actor_loss.item(), rel=1e-6)
    assert metrics["stddev"] == pytest.approx(std)
    assert "value_loss" not in metrics and "lambda" not in metrics
    for (name, p), p_defined in zip(model.policy.state_dict().items(), policy.state_dict().values()):
        assert th.allclose(p, p_defined, atol=1e-6), name


def test_no_value_net_no_perturbation_no_awakening_and_save_load(tmp_path):
    model = DrM("MlpPolicy", feature_env(), variant="drqv2", seed=0, dormant_perturb_interval=10, **FAST)
    model.learn(60)
    assert model.perturbations == [] and model.awaken_step is None and model.value_net is None
    assert 0 <= model.dormant_ratio <= 1  # measured and logged, as the DrM repository's agents/drqv2.py does
    assert model.policy.variant == "drm"  # agents/drm.py's MLP Q-heads are DrQ-v2's
    model.save(tmp_path / "drqv2")
    loaded = DrM.load(tmp_path / "drqv2", env=feature_env())
    assert loaded.variant == "drqv2" and loaded.value_net is None
    loaded.learn(20, reset_num_timesteps=False)
    with pytest.raises(RuntimeError, match="no perturbation"):
        model.perturb()
    with pytest.raises(ValueError, match="contradicts"):
        DrM("MlpPolicy", feature_env(), variant="drqv2", policy_kwargs={"variant": "drm_mw"})
