"""DrM's mechanisms checked against their definitions (reference/drm.md §3-4), computed independently here."""

import copy
import math

import numpy as np
import pytest
import torch as th
from torch import nn

from pvrw.drm import DrM, LinearStepSchedule, parse_step_schedule
from pvrw.drm.dormant import dormant_lambda, dormant_ratio, dormant_stddev, perturb, perturb_factor
from pvrw.drm.networks import SHIFT_METHODS, Actor, RandomShiftsAug, sample_action, weight_init
from pvrw.drm.schedules import ConstantStepSchedule, TwoPhaseLinearStepSchedule

TINY = dict(hidden_dim=16, feature_dim=6)



# --- formulas at chosen ratios (values from the reference notes' tables) ---------------------------------------------


@pytest.mark.parametrize("ratio, expected", [(0.0, 0.95), (0.05, 0.90), (0.1, 0.80), (0.2, 0.60), (0.4, 0.20), (0.9, 0.20)])
def test_perturb_factor(ratio, expected):
    assert perturb_factor(ratio, perturb_rate=2, min_factor=0.2, max_factor=0.95) == pytest.approx(expected)


@pytest.mark.parametrize("ratio, expected", [(0.0, 0.119), (0.1, 0.269), (0.2, 0.5), (0.3, 0.731), (1.0, 0.9997)])
def test_dormant_stddev(ratio, expected):
    assert dormant_stddev(ratio, target_dormant_ratio=0.2, dormant_temp=10) == pytest.approx(expected, abs=6e-4)


@pytest.mark.parametrize("ratio, expected", [(0.0, 0.600), (0.15, 0.555), (0.2, 0.300), (0.25, 0.046), (0.3, 0.004)])
def test_dormant_lambda(ratio, expected):
    assert dormant_lambda(ratio, target_lambda=0.6, target_dormant_ratio=0.2, lambda_temp=50) == pytest.approx(
        expected, abs=6e-4
    )


def _model(variant="drm", **kwargs):
    return DrM(
        "MlpPolicy", "Pendulum-v1", variant=variant, policy_kwargs=TINY, learning_starts=10, buffer_size=1000, seed=0, **kwargs
    )


def test_model_schedules_follow_formulas():
    model = _model(max_perturb_factor=0.95, stddev_schedule="linear(1.0,0.1,1000)")
    model.dormant_ratio = 0.1
    assert model.perturb_factor() == pytest.approx(0.8)
    assert model.exploitation_lambda() == pytest.approx(0.6 / (1 + math.exp(50 * (0.1 - 0.2))))
    sigma = 1 / (1 + math.exp(-10 * (0.1 - 0.2)))
    assert model.exploration_std(step=5000) == pytest.approx(sigma)  # not awake yet: dormant std only
    model.awaken_step = 4000
    assert model.exploration_std(step=4000) == pytest.approx(1.0)  # the linear schedule restarts at awakening
    assert model.exploration_std(step=4500) == pytest.approx(0.55)
    assert model.exploration_std(step=9000) == pytest.approx(max(sigma, 0.1))
    model.dormant_ratio = 0.35  # the max() lets a high dormant ratio raise the std again
    assert model.exploration_std(step=9000) == pytest.approx(1 / (1 + math.exp(-10 * 0.15)))
    model_mw = _model("drm_mw")
    model_mw.dormant_ratio = 0.3
    assert model_mw.exploitation_lambda() == 0.5  # constant in drm_mw
    assert (model_mw.n_steps, model_mw.gamma, model_mw.max_perturb_factor) == (10, 0.97, 0.95)
    assert (model.n_steps, model.gamma) == (3, 0.99)
    assert _model("drm_mw", gamma=0.9, n_steps=2).gamma == 0.9  # explicit arguments win over variant defaults


def test_schedules_parse_and_pickle():
    import pickle

    schedule = parse_step_schedule("linear(1.0,0.1,500000)")
    assert schedule == LinearStepSchedule(1.0, 0.1, 500000)
    assert [schedule(s) for s in (0, 250000, 500000, 10**7)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert pickle.loads(pickle.dumps(schedule)) == schedule
    assert parse_step_schedule(repr(schedule)) == schedule
    assert parse_step_schedule("0.2") == ConstantStepSchedule(0.2) == parse_step_schedule(0.2)
    two = parse_step_schedule("step_linear(1.0,0.5,100,0.1,100)")
    assert isinstance(two, TwoPhaseLinearStepSchedule)
    assert [two(s) for s in (0, 50, 100, 150, 300)] == pytest.approx([1.0, 0.75, 0.5, 0.3, 0.1])
    with pytest.raises(ValueError, match="Unknown schedule"):
        parse_step_schedule("cosine(1,2)")


# --- dormant ratio on planted dormant units -------------------------------------------------------------------------


def test_dormant_ratio_planted_units():
    th.manual_seed(0)
    actor = Actor(repr_dim=7, action_dim=3, feature_dim=5, hidden_dim=12)
    actor.apply(weight_init)
    with th.no_grad():
        actor.trunk[0].weight[1].zero_()  # trunk unit 1: output exactly 0
        actor.policy[0].weight[2:4].zero_()  # hidden units 2, 3: output 0
        actor.policy[0].weight[5].zero_()
        actor.policy[0].bias[5] = -3.0  # hidden unit 5: constant -3 before the ReLU, 0 after it
        actor.policy[2].weight[7] *= 1e-4  # hidden-2 unit 7: tiny relative to its layer
    x = th.randn(64, 7)

    # Independent computation: per-layer |output| means, dormant if < 0.025 x layer mean. As the reference scores
    # after the forward pass, in-place ReLUs make hidden layers count post-ReLU, trunk/output layers pre-activation.
    h0 = x @ actor.trunk[0].weight.T + actor.trunk[0].bias
    z = th.tanh(nn.functional.layer_norm(h0, (5,), actor.trunk[1].weight, actor.trunk[1].bias))
    h1 = th.relu(z @ actor.policy[0].weight.T + actor.policy[0].bias)
    h2 = th.relu(h1 @ actor.policy[2].weight.T + actor.policy[2].bias)
    h3 = h2 @ actor.policy[4].weight.T + actor.policy[4].bias
    dormant = 0
    for out in (h0, h1, h2, h3):
        score = out.detach().abs().mean(0)
        dormant += int((score < 0.025 * score.mean()).sum())
    expected = dormant / (5 + 12 + 12 + 3)
    assert dormant >= 5  # the planted units are found
    assert dormant_ratio(actor, x, threshold=0.025) == pytest.approx(expected)
    assert not actor.trunk[0]._forward_hooks and not actor.policy[0]._forward_hooks  # hooks removed


def test_dormant_ratio_is_neuron_weighted():
    layer_a, layer_b = nn.Linear(3, 2), nn.Linear(2, 10)
    with th.no_grad():
        for layer in (layer_a, layer_b):
            layer.weight.fill_(1.0)
            layer.bias.zero_()
        layer_a.weight[0].zero_()  # 1 of 2 units dormant in the first layer, none in the second
    net = nn.Sequential(layer_a, layer_b)
    assert dormant_ratio(net, th.ones(4, 3)) == pytest.approx(1 / 12)  # not the mean of per-layer ratios (0.25)


# --- perturbation ---------------------------------------------------------------------------------------------------


def _is_orthogonal(matrix):
    m = matrix if matrix.shape[0] <= matrix.shape[1] else matrix.T
    return th.allclose(m @ m.T, th.eye(m.shape[0]), atol=1e-4)


@pytest.mark.parametrize("factor", [0.2, 0.8])
def test_perturb_blends_linear_layers_only(factor):
    th.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 9), nn.LayerNorm(9), nn.ReLU(), nn.Linear(9, 4))
    with th.no_grad():
        for module in net.modules():
            for p in module.parameters():
                p.normal_()
    optimizer = th.optim.Adam(net.parameters(), lr=1e-3)
    net(th.randn(5, 6)).sum().backward()
    optimizer.step()
    assert len(optimizer.state) > 0
    before = {k: v.clone() for k, v in net.state_dict().items()}
    perturb(net, optimizer, factor)
    after = net.state_dict()
    for index in (0, 3):
        fresh = (after[f"{index}.weight"] - factor * before[f"{index}.weight"]) / (1 - factor)
        assert _is_orthogonal(fresh)  # theta = a * theta + (1 - a) * orthogonal init
        assert th.allclose(after[f"{index}.bias"], factor * before[f"{index}.bias"], atol=1e-6)  # fresh biases are 0
    assert th.equal(after["1.weight"], before["1.weight"]) and th.equal(after["1.bias"], before["1.bias"])  # LayerNorm
    assert len(optimizer.state) == 0  # Adam state reset
    net(th.randn(5, 6)).sum().backward()
    optimizer.step()  # the optimizer still works on the same parameters


def test_perturb_draws_the_reference_random_numbers():
    """The reference re-initialises a deep copy of the whole network (``deepcopy(net).apply(weight_init)``, the
    convolutions included) and keeps the Linear draws: the same fresh weights and the same random stream after."""
    th.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7)),
        nn.Conv2d(4, 2, 1),
        nn.Linear(7, 2),
    )
    before = copy.deepcopy(net)
    th.manual_seed(7)
    fresh = copy.deepcopy(net)
    fresh.apply(weight_init)
    expected_rng = th.get_rng_state()
    th.manual_seed(7)
    perturb(net, None, 0.25)
    assert th.equal(th.get_rng_state(), expected_rng)
    for name in ("2.0", "4"):
        layer, old, new = (dict(m.named_modules())[name] for m in (net, before, fresh))
        assert th.allclose(layer.weight, 0.25 * old.weight + 0.75 * new.weight, atol=1e-6)
    for name in ("0", "3"):  # convolutions: drawn, not changed
        assert th.equal(dict(net.named_modules())[name].weight, dict(before.named_modules())[name].weight)


def test_perturb_factor_one_keeps_weights_but_resets_state():
    net = nn.Linear(3, 3)
    optimizer = th.optim.Adam(net.parameters())
    net(th.randn(2, 3)).sum().backward()
    optimizer.step()
    before = net.weight.detach().clone()
    perturb(net, optimizer, 1.0)
    assert th.equal(net.weight, before) and len(optimizer.state) == 0


def test_model_perturb_networks():
    model = DrM("MlpPolicy", "Pendulum-v1", policy_kwargs=TINY, learning_starts=16, batch_size=8, seed=0)
    model.learn(40)
    for opt in (model.actor.optimizer, model.critic.optimizer, model.value_net.optimizer):
        assert len(opt.state) > 0
    model.dormant_ratio = 0.1  # factor 0.8
    actor_bias = model.actor.policy[0].bias.detach().clone()
    value_bias = model.value_net.V[2].bias.detach().clone()
    target_bias = model.critic_target.Q1[0].bias.detach().clone()
    critic_ln = model.critic.trunk[1].weight.detach().clone()
    critic_before = model.critic.Q1[0].weight.detach().clone()
    target_before = model.critic_target.Q1[0].weight.detach().clone()
    assert model.perturb() == pytest.approx(0.8)
    assert th.allclose(model.actor.policy[0].bias, 0.8 * actor_bias)
    assert th.allclose(model.value_net.V[2].bias, 0.8 * value_bias)
    assert th.allclose(model.critic_target.Q1[0].bias, 0.8 * target_bias)
    assert th.equal(model.critic.trunk[1].weight, critic_ln)
    fresh_online = (model.critic.Q1[0].weight - 0.8 * critic_before) / 0.2
    fresh_target = (model.critic_target.Q1[0].weight - 0.8 * target_before) / 0.2
    assert not th.allclose(fresh_online, fresh_target)  # the target critic gets its own fresh init
    for opt in (model.actor.optimizer, model.critic.optimizer, model.value_net.optimizer):
        assert len(opt.state) == 0
    assert model.perturbations[-1]["factor"] == pytest.approx(0.8)


def test_cnn_encoder_only_optimizer_reset():
    from stable_baselines3.common.envs import FakeImageEnv

    env = FakeImageEnv(screen_height=16, screen_width=16, n_channels=3, discrete=False)
    model = DrM("CnnPolicy", env, policy_kwargs=TINY, learning_starts=12, batch_size=4, buffer_size=100, seed=0)
    model.learn(20)
    encoder_opt = model.policy.encoder_optimizer
    assert len(encoder_opt.state) > 0
    conv = model.policy.features_extractor.convnet[0].weight.detach().clone()
    model.perturb()
    assert th.equal(model.policy.features_extractor.convnet[0].weight, conv)  # no nn.Linear in the encoder
    assert len(encoder_opt.state) == 0


# --- random shift augmentation and action sampling ------------------------------------------------------------------


@pytest.mark.parametrize("method", SHIFT_METHODS)
@pytest.mark.parametrize("height, width", [(12, 12), (10, 14)])
def test_random_shift_is_an_integer_shift_of_the_padded_image(height, width, method):
    th.manual_seed(0)
    pad = 4
    x = th.rand(32, 6, height, width)
    out = RandomShiftsAug(pad, method)(x)
    assert out.shape == x.shape
    padded = nn.functional.pad(x, (pad,) * 4, mode="replicate")
    shifts = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if th.allclose(out[i], padded[i, :, dy : dy + height, dx : dx + width], atol=1e-5)
        ]
        assert matches, "every sample must be one integer shift, shared by all its channels"
        shifts.add(matches[0])
    assert len(shifts) > 5  # shifts are drawn per sample
    # linear in pixel values, so shifting SB3's obs / 255 equals shifting obs then dividing (as DrQ-v2 does)
    th.manual_seed(3)
    a = RandomShiftsAug(pad, method)(x * 255.0) / 255.0
    th.manual_seed(3)
    b = RandomShiftsAug(pad, method)(x)
    assert th.allclose(a, b, atol=1e-5)


def test_index_shift_is_exact_on_bytes_and_draws_the_reference_shifts():
    """The gather moves uint8 pixels unchanged, by the shifts grid_sample (the reference) takes from the same draw, and
    leaves the random stream where grid_sample leaves it."""
    images = th.randint(0, 256, (64, 9, 20, 20), dtype=th.uint8)
    th.manual_seed(5)
    gathered = RandomShiftsAug(4, "index")(images)
    index_rng = th.get_rng_state()
    th.manual_seed(5)
    sampled = RandomShiftsAug(4, "grid_sample")(images)
    assert th.equal(th.get_rng_state(), index_rng)
    assert gathered.dtype == th.uint8
    assert th.equal(gathered.float(), sampled.round())  # same pixels, where grid_sample is a hair off integers
    assert (gathered.float() - sampled).abs().max() < 0.01
    with pytest.raises(ValueError, match="Unknown random-shift method 'bicubic'"):
        RandomShiftsAug(4, "bicubic")


def test_sample_action_clip_and_straight_through_gradient():
    th.manual_seed(0)
    mean = th.full((2000, 2), 0.9, requires_grad=True)
    action = sample_action(mean, std=1.0, clip=0.3)
    assert action.max() <= 1 - 1e-6 and action.min() >= 0.6 - 1e-6  # noise clipped at +-0.3, then clamped
    action.sum().backward()
    assert th.equal(mean.grad, th.ones_like(mean))  # the clamp passes gradients through
    unclipped = sample_action(th.zeros(5000, 1), std=0.5)
    assert unclipped.std().item() == pytest.approx(0.5, rel=0.05)
    assert np.isclose(sample_action(th.zeros(3, 1), std=0.0).abs().max().item(), 0.0)


# --- exploitation: expectile value regression and the blended TD target ---------------------------------------------


def _batch(seed=0, size=16):
    from stable_baselines3.common.type_aliases import ReplayBufferSamples

    generator = th.Generator().manual_seed(seed)
    obs, next_obs = th.randn(size, 3, generator=generator), th.randn(size, 3, generator=generator)
    actions = th.rand(size, 1, generator=generator) * 2 - 1
    rewards = th.randn(size, 1, generator=generator)
    dones = (th.rand(size, 1, generator=generator) < 0.3).float()
    return ReplayBufferSamples(obs, actions, next_obs, dones, rewards, th.full((size, 1), 0.99**3))


def test_expectile_value_loss():
    model = _model()
    data = _batch()
    with th.no_grad():
        q = th.min(*model.critic(data.observations, data.actions))
        model.value_net.V[4].bias += (q - model.value_net(data.observations)).median()  # errors of both signs
        error = model.value_net(data.observations) - q
        weights = th.where(error > 0, th.tensor(0.1), th.tensor(0.9))  # expectile 0.9: under-estimates weigh 0.9
        expected = (weights * error**2).mean().item()
    assert (error > 0).any() and (error <= 0).any()
    assert model._update_value(data.observations, data.actions)["value_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("lambda_", [0.0, 0.37])
def test_blended_td_target(lambda_):
    model = _model()
    data = _batch(1)
    with th.no_grad():
        for param in model.critic_target.parameters():  # make the target differ from the online critic
            param.add_(0.1 * th.randn_like(param))
        next_action = th.clamp(model.actor(data.next_observations), -1 + 1e-6, 1 - 1e-6)  # std 0: the mean action
        target_q = th.min(*model.critic_target(data.next_observations, next_action))
        blended = lambda_ * model.value_net(data.next_observations) + (1 - lambda_) * target_q
        y = data.rewards + (1 - data.dones) * data.discounts * blended
        q1, q2 = model.critic(data.observations, data.actions)
        expected = (nn.functional.mse_loss(q1, y) + nn.functional.mse_loss(q2, y)).item()
    metrics = model._update_critic(data.observations, data.next_observations, data, std=0.0, lambda_=lambda_)
    assert metrics["critic_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["critic_target_q"] == pytest.approx(y.mean().item(), rel=1e-5)


@pytest.mark.parametrize("variant", ["drm", "drm_mw"])
def test_awakening_condition(variant):
    # target_dormant_ratio above 1: every measured ratio is "low", so only the step condition decides
    model = DrM("MlpPolicy", "Pendulum-v1", variant=variant, policy_kwargs=TINY, learning_starts=16, batch_size=8,
                buffer_size=200, num_expl_steps=1000, target_dormant_ratio=1.01, seed=0)  # fmt: skip
    model.learn(30)
    if variant == "drm":  # agents/drm.py: only after num_expl_steps
        assert model.awaken_step is None
        model._update(model.replay_buffer.sample(8), step=1001)
        assert model.awaken_step == 1001
    else:  # agents/drm_mw.py: at the first update (num_timesteps 18) whatever the step
        assert model.awaken_step == 18


def test_predict_explores_with_the_current_std():
    model = _model()
    model.dormant_ratio = 0.2  # not awake: std = sigma(0.2) = 0.5
    obs = np.zeros((4000, 3), np.float32)
    mean = model.predict(obs[:1], deterministic=True)[0] / 2.0  # Pendulum actions are scaled by 2
    assert abs(mean.item()) < 0.2
    actions = model.predict(obs, deterministic=False)[0] / 2.0
    assert actions.std() == pytest.approx(0.5, rel=0.08)
    assert np.abs(actions).max() < 1.0
