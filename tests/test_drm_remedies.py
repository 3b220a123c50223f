"""Dormant-ratio remedies (pvrw.drm.remedies, DrM options): ReDo, more networks measured, head LayerNorm, resets,
and the perturbation of a PIE-G head."""

import csv

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.logger import configure
from test_drm_run import FAST, TINY, feature_env, pixel_venv

from pvrw.drm import DrM
from pvrw.drm.dormant import dormant_ratio
from pvrw.drm.networks import Actor, Critic, weight_init
from pvrw.drm.remedies import add_head_norm, dormant_masks, dormant_summary, recycle_layers, redo


def _planted_actor():
    """An actor with planted dormant units: trunk unit 2 (LayerNorm gain 0, so tanh(0) = 0 for every input) and
    policy.0 units 1 and 4 (zero weights, negative bias: ReLU 0); every other hidden unit has a large bias."""
    th.manual_seed(0)
    actor = Actor(repr_dim=6, action_dim=2, feature_dim=5, hidden_dim=8)
    actor.apply(weight_init)
    with th.no_grad():
        actor.trunk[1].weight[2] = 0.0
        actor.policy[0].bias.fill_(3.0)
        actor.policy[0].weight[[1, 4]] = 0.0
        actor.policy[0].bias[[1, 4]] = -1.0
        actor.policy[2].bias.fill_(20.0)
    optimizer = th.optim.Adam(actor.parameters(), lr=1e-3)
    for _ in range(2):  # non-zero Adam moments everywhere
        optimizer.zero_grad()
        actor(th.randn(16, 6)).pow(2).sum().backward()
        optimizer.step()
    with th.no_grad():  # the Adam steps moved the planted parameters: plant again
        actor.trunk[1].weight[2] = 0.0
        actor.policy[0].weight[[1, 4]] = 0.0
        actor.policy[0].bias[[1, 4]] = -1.0
    return actor, optimizer


def test_redo_recycles_exactly_the_planted_units():
    actor, optimizer = _planted_actor()
    params = dict(actor.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    state = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in params.items()}
    x = th.randn(64, 6)

    th.manual_seed(123)
    recycled = redo(actor, optimizer, x, tau=0.1)
    th.manual_seed(123)  # the fresh incoming weights are the network's own initialiser, drawn layer by layer
    fresh_trunk, fresh_policy = th.empty(5, 6), th.empty(8, 5)
    th.nn.init.orthogonal_(fresh_trunk)
    th.nn.init.orthogonal_(fresh_policy)

    assert recycled == {"trunk.0": 1, "policy.0": 2, "policy.2": 0}  # the output layer policy.4 is never scored
    # (parameter, index of the recycled entries, expected new value)
    changed = {
        "trunk.0.weight": ((2,), fresh_trunk[2]),
        "trunk.0.bias": ((2,), 0.0),
        "trunk.1.weight": ((2,), 1.0),
        "trunk.1.bias": ((2,), 0.0),
        "policy.0.weight": (([1, 4],), fresh_policy[[1, 4]] * (th.arange(5) != 2)),  # column 2: trunk unit 2's
        "policy.0.bias": (([1, 4],), 0.0),
    }
    outgoing = {"policy.0.weight": (slice(None), 2), "policy.2.weight": (slice(None), [1, 4])}
    for name, param in params.items():
        keep = th.ones_like(param, dtype=th.bool)
        if name in changed:
            index, value = changed[name]
            assert th.equal(param[index], th.as_tensor(value).expand_as(param[index]))
            keep[index] = False
        if name in outgoing:
            assert th.equal(param[outgoing[name]], th.zeros_like(param[outgoing[name]]))
            keep[outgoing[name]] = False
        assert th.equal(param[keep], before[name][keep]), f"{name}: a unit that is not dormant changed"
        for key in ("exp_avg", "exp_avg_sq"):
            moment = optimizer.state[param][key]
            assert th.equal(moment[~keep], th.zeros_like(moment[~keep])), f"{name}: {key} not reset"
            assert th.equal(moment[keep], state[name][key][keep]), f"{name}: {key} of another unit changed"
        assert th.equal(optimizer.state[param]["step"], state[name]["step"])  # Adam's count is kept (official code)
    with th.no_grad():  # the recycled units are active again
        hidden = th.relu(actor.policy[0](actor.trunk(x)))
    assert bool(actor.trunk(x)[:, 2].ne(0).any()) and bool(hidden[:, [1, 4]].ne(0).any(0).all())


def test_recycle_layers_of_the_critic_read_the_trunk_before_the_action():
    critic = Critic(repr_dim=6, action_dim=2, feature_dim=5, hidden_dim=8)
    layers = {layer.name: layer for layer in recycle_layers(critic)}
    assert sorted(layers) == ["Q1.0", "Q1.2", "Q2.0", "Q2.2", "trunk.0"]
    assert [(reader, first) for reader, first in layers["trunk.0"].outgoing] == [(critic.Q1[0], 0), (critic.Q2[0], 0)]
    assert layers["trunk.0"].norms == [critic.trunk[1]]
    with th.no_grad():  # trunk unit 3 dead (LayerNorm gain 0): its columns in both Q heads are zeroed, not an action's
        critic.trunk[1].weight[3] = 0.0
    optimizer = th.optim.Adam(critic.parameters())
    counts = redo(critic, optimizer, th.randn(32, 6), th.rand(32, 2), tau=0.0)
    assert counts["trunk.0"] == 1
    for head in (critic.Q1, critic.Q2):
        assert th.equal(head[0].weight[:, 3], th.zeros(8)) and bool(head[0].weight[:, 5:].ne(0).all())


def test_dormant_masks_give_drms_ratio():
    actor, _ = _planted_actor()
    x = th.randn(32, 6)
    ratio, layers = dormant_summary(dormant_masks(actor, x), per_layer=True)
    assert ratio == pytest.approx(dormant_ratio(actor, x)) and ratio == pytest.approx(2 / (5 + 8 + 8 + 2))
    # DrM scores the trunk's Linear output before its LayerNorm: the gain-0 unit is not dormant there (ReDo's is)
    assert layers == pytest.approx({"trunk.0": 0.0, "policy.0": 2 / 8, "policy.2": 0.0, "policy.4": 0.0})


def test_head_norm_inserts_layernorms_before_the_relus_and_optimizes_them(tmp_path):
    actor = Actor(repr_dim=6, action_dim=2, feature_dim=5, hidden_dim=8)
    assert add_head_norm(actor) == 2 and add_head_norm(actor) == 0  # idempotent
    assert [type(m).__name__ for m in actor.policy] == [
        "Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU", "OutputLinear"
    ]  # fmt: skip
    model = DrM("MlpPolicy", feature_env(), seed=0, head_norm=True, **FAST)
    for net in (model.actor.policy, model.critic.Q1, model.critic.Q2, model.value_net.V):
        assert sum(isinstance(m, th.nn.LayerNorm) for m in net) == 2
    assert model.critic_target.state_dict().keys() == model.critic.state_dict().keys()
    for net in (model.actor, model.critic, model.value_net):
        optimized = {id(p) for group in net.optimizer.param_groups for p in group["params"]}
        assert optimized == {id(p) for p in net.parameters()}
    model.learn(40)
    model.save(tmp_path / "model")
    loaded = DrM.load(tmp_path / "model", env=feature_env())
    obs = model.observation_space.sample()[None]
    assert np.array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    assert DrM("MlpPolicy", feature_env(), seed=0, **FAST).actor.policy[1].__class__.__name__ == "ReLU"  # off: default


def test_reset_interval_reinitialises_the_heads_and_their_optimizers():
    model = DrM("PiegPolicy", feature_env((2, 3, 3)), seed=0, reset_interval=30, **FAST)
    encoder = model.policy.features_extractor.fc.weight
    model.learn(27)  # to step 28: SB3 collects train_freq = 2 steps at a time
    assert model.resets == [] and len(model.actor.optimizer.state) > 0
    actor_before, encoder_before = model.actor.policy[0].weight.detach().clone(), encoder.detach().clone()
    model.learn(4, reset_num_timesteps=False)  # the update at step 30 crosses 30
    assert [r["step"] for r in model.resets] == [30]
    assert not th.allclose(model.actor.policy[0].weight, actor_before)
    assert not th.equal(encoder, encoder_before)  # the encoder is not reset, it trained on
    model.reset_networks()
    assert len(model.actor.optimizer.state) == len(model.critic.optimizer.state) == 0
    for name, param in model.critic.state_dict().items():
        assert th.equal(model.critic_target.state_dict()[name], param)
    assert all(bool((m.bias == 0).all()) for m in model.actor.modules() if isinstance(m, th.nn.Linear))


def test_each_option_is_logged(tmp_path):
    model = DrM(
        "MlpPolicy", feature_env(), seed=0, dormant_nets=["actor", "critic", "value"], dormant_per_layer=True,
        redo_interval=5, redo_tau=0.5, reset_interval=40, **FAST,
    )  # fmt: skip
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(60, log_interval=1)
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    for key in ("critic_dormant_ratio", "value_dormant_ratio", "actor_dormant_ratio/policy.0",
                "critic_dormant_ratio/Q2.4", "value_dormant_ratio/trunk.0", "n_redo", "redo_recycled_actor",
                "redo_recycled_critic", "n_resets", "last_reset_step"):  # fmt: skip
        assert last.get(f"train/{key}") not in (None, ""), key
    assert len(model.redo_events) == model._n_updates // 5
    assert 1 <= float(last["train/n_redo"]) <= len(model.redo_events)
    assert [e["update"] for e in model.redo_events] == list(range(5, model._n_updates + 1, 5))
    assert float(last["train/n_resets"]) == 1 and float(last["train/last_reset_step"]) == model.resets[0]["step"]
    assert set(model.dormant_ratios) == {"actor", "critic", "value"}
    default = DrM("MlpPolicy", feature_env(), seed=0, **FAST)
    default.set_logger(configure(str(tmp_path / "default"), ["csv"]))
    default.learn(30, log_interval=1)
    with open(tmp_path / "default" / "progress.csv") as f:
        keys = set(next(csv.DictReader(f)))
    assert not {k for k in keys if "critic_dormant" in k or "redo" in k or "reset" in k}  # off by default


@pytest.mark.parametrize(
    "options",
    [
        dict(redo_interval=4, redo_nets=["actor", "critic", "value"]),
        dict(head_norm=True, dormant_nets=["critic"]),
        dict(reset_interval=20),
        dict(variant="drqv2", redo_interval=4, reset_interval=20, head_norm=True),
        dict(variant="drm_mw", head_norm=True, redo_interval=4),
    ],
)
def test_every_option_trains_end_to_end_on_pixels(options):
    model = DrM("CnnPolicy", pixel_venv(), seed=0, **{**FAST, "learning_starts": 12}, **options)
    model.learn(44)
    assert model._n_updates > 10
    for param in model.policy.parameters():
        assert bool(th.isfinite(param).all())
    if "redo_interval" in options:
        assert len(model.redo_events) == model._n_updates // 4


def test_pieg_head_is_perturbed_like_every_linear_and_its_layernorm_kept():
    # What is perturbed in front of a frozen PVR: the PIE-G head's Linear is blended with a fresh init (as the
    # reference's utils.perturb treats every nn.Linear of the networks it is given), its LayerNorm is kept and the
    # encoder optimizer is reset; the DrQ-v2 conv encoder has no Linear (test_drm_mechanisms).
    model = DrM("PiegPolicy", feature_env((2, 3, 3)), seed=0, policy_kwargs={**TINY, "features_extractor_kwargs": {
        "pieg_dim": 16}}, **{k: v for k, v in FAST.items() if k != "policy_kwargs"})  # fmt: skip
    model.learn(30)
    head = model.policy.features_extractor
    assert len(model.policy.encoder_optimizer.state) > 0
    with th.no_grad():
        head.ln.weight.mul_(1.5)  # not at its init value
    bias, ln = head.fc.bias.detach().clone(), head.ln.weight.detach().clone()
    model.dormant_ratio = 0.1
    assert model.perturb() == pytest.approx(0.8)
    assert th.allclose(head.fc.bias, 0.8 * bias) and th.equal(head.ln.weight, ln)
    assert len(model.policy.encoder_optimizer.state) == 0
