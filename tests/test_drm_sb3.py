"""SB3 habits on DrM: policy_kwargs as SB3 spells them, image-like float inputs, Dict observations, one-line refusals,
optimize_memory_usage, check_env on pvrw's envs (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from drm_sb3_envs import FAST, DictObsEnv, StackedImageEnv, fast
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

from pvrw.drm import DrM, DrMCombinedExtractor, DrMDictReplayBuffer, trainable_parameter_counts
from pvrw.drm.buffers import DrMReplayBuffer
from pvrw.drm.networks import DrQEncoder


def linear_widths(module):
    return [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]


# --- policy_kwargs -------------------------------------------------------------------------------------------------


def test_net_arch_list_dict_activation_and_n_critics():
    model = DrM("MlpPolicy", "Pendulum-v1", seed=0, **fast(net_arch=[24, 12]))
    # trunk (feature_dim) then the hidden layers of net_arch, for every head
    assert linear_widths(model.actor) == [8, 24, 12, 1]
    assert linear_widths(model.value_net) == [8, 24, 12, 1]
    assert linear_widths(model.critic.Q1) == [24, 12, 1]

    model = DrM("MlpPolicy", "Pendulum-v1", seed=0, **fast(net_arch=dict(pi=[20], qf=[24, 24]), activation_fn=nn.Tanh,
                                                             n_critics=3))  # fmt: skip
    assert linear_widths(model.actor) == [8, 20, 1]
    assert linear_widths(model.value_net) == [8, 24, 24, 1]  # vf defaults to qf
    assert [linear_widths(model.critic.Q3)] == [[24, 24, 1]] and not hasattr(model.critic, "Q4")
    assert isinstance(model.actor.policy[1], nn.Tanh)
    model.learn(30)
    assert model._n_updates > 0 and len(model.critic(th.zeros(1, 3), th.zeros(1, 1))) == 3

    model = DrM("MlpPolicy", "Pendulum-v1", seed=0, **fast(n_critics=1))  # DDPG's single critic
    model.learn(30)
    assert model._n_updates > 0


def test_reference_names_and_defaults_keep_working():
    model = DrM("MlpPolicy", "Pendulum-v1", **FAST)  # hidden_dim=16, feature_dim=8
    assert linear_widths(model.actor) == [8, 16, 16, 1] and linear_widths(model.critic.Q2) == [16, 16, 1]
    assert isinstance(model.actor.policy[1], nn.ReLU) and model.actor.policy[1].inplace  # the reference's ReLU
    relu = DrM("MlpPolicy", "Pendulum-v1", **fast(activation_fn=nn.ReLU))  # SB3's spelling of the same network
    assert str(relu.actor) == str(model.actor)


def test_drq_encoder_features_dim_projection():
    env = StackedImageEnv()
    flat = DrM("CnnPolicy", env, **FAST).policy.features_extractor
    assert isinstance(flat, DrQEncoder) and flat.projection is None and flat.features_dim == 32  # 16 px: a 1x1 map
    projected = DrM("CnnPolicy", env, **fast(features_extractor_kwargs=dict(features_dim=16)))
    assert projected.policy.features_extractor.features_dim == 16
    assert projected.actor.trunk[0].in_features == 16


def test_nature_cnn_is_the_critic_trained_encoder():
    policy_kwargs = dict(features_extractor_class=NatureCNN, features_extractor_kwargs=dict(features_dim=16))
    model = DrM("CnnPolicy", StackedImageEnv(side=36), seed=0, **fast(**policy_kwargs))
    encoder = model.policy.features_extractor
    assert isinstance(encoder, NatureCNN) and model.policy.actor_features_extractor is None
    model.learn(20)
    gradients = []

    def count_backward_passes(_module, _inputs, output):
        if output.requires_grad:
            output.register_hook(gradients.append)

    encoder.register_forward_hook(count_backward_passes)
    before = [p.detach().clone() for p in encoder.parameters()]
    model._update(model.replay_buffer.sample(8), model.num_timesteps)
    assert len(gradients) == 1  # the critic loss only (actor and value see detached features)
    assert any(not th.equal(b, p) for b, p in zip(before, encoder.parameters()))


def test_share_features_extractor_false_gives_the_actor_its_own_encoder():
    model = DrM("CnnPolicy", StackedImageEnv(), seed=0, **fast(share_features_extractor=False))
    policy = model.policy
    actor_encoder = policy.actor_features_extractor
    assert isinstance(actor_encoder, DrQEncoder) and actor_encoder is not policy.features_extractor
    actor_params = {id(p) for group in model.actor.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in actor_encoder.parameters()} <= actor_params
    counts = trainable_parameter_counts(model)
    assert counts["actor_encoder"] == counts["encoder"] > 0
    model.learn(20)
    critic_before = [p.detach().clone() for p in policy.features_extractor.parameters()]
    actor_before = [p.detach().clone() for p in actor_encoder.parameters()]
    model._update(model.replay_buffer.sample(8), model.num_timesteps)
    assert any(not th.equal(b, p) for b, p in zip(actor_before, actor_encoder.parameters()))  # trained by the actor
    assert any(not th.equal(b, p) for b, p in zip(critic_before, policy.features_extractor.parameters()))
    obs = model.get_env().reset()
    with th.no_grad():  # acting uses the actor's encoder
        expected = model.actor(actor_encoder(policy.obs_to_tensor(obs)[0].float() / 255.0))
    np.testing.assert_allclose(model.predict(obs, deterministic=True)[0], expected.numpy(), atol=1e-6)


def test_unknown_and_impossible_keys_are_refused_in_one_line():
    with pytest.raises(TypeError, match=r"unknown policy_kwargs \['nett_arch'\]; accepted: .*net_arch.*share_features"):
        DrM("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(nett_arch=[8]))
    with pytest.raises(TypeError, match="use_sde.*deterministic"):
        DrM("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(use_sde=True))
    with pytest.raises(TypeError, match="policy_delay.*every gradient step"):
        DrM("MlpPolicy", "Pendulum-v1", policy_delay=2)
    with pytest.raises(TypeError, match="ent_coef.*no entropy"):
        DrM("MlpPolicy", "Pendulum-v1", ent_coef="auto")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['colour'\]"):
        DrM("MlpPolicy", "Pendulum-v1", colour=1)
    with pytest.raises(ValueError, match="net_arch keys \\['vf_'\\]"):
        DrM("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=dict(pi=[8], vf_=[8])))
    with pytest.raises(ValueError, match="positive ints"):
        DrM("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[0]))


# --- observations ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extractor", [DrQEncoder, NatureCNN])
def test_cnn_policy_on_image_like_float_inputs(extractor):
    env = StackedImageEnv(side=36, dtype=np.float32)
    model = DrM("CnnPolicy", env, seed=0, **fast(normalize_images=False, features_extractor_class=extractor))
    assert model.policy.augment and model.policy.image_keys == [None]
    assert model.replay_buffer.frame_stack == 3  # 9 float channels are 3 RGB frames, not 9 feature rows
    model.learn(30)
    assert model._n_updates > 0
    with pytest.raises(ValueError, match="CnnPolicy needs image observations.*normalize_images=False"):
        DrM("CnnPolicy", env, **FAST)


@pytest.mark.parametrize("kind", ["pixels", "features"])
def test_multi_input_policy_on_dict_observations(kind):
    env = DummyVecEnv([lambda: DictObsEnv(kind)] * 2)
    model = DrM("MultiInputPolicy", env, seed=0, **FAST)
    assert isinstance(model.policy.features_extractor, DrMCombinedExtractor)
    assert isinstance(model.replay_buffer, DrMDictReplayBuffer) and model.replay_buffer.n_steps == 2
    assert model.policy.image_keys == ([kind] if kind == "pixels" else [])
    assert model.policy.augment == (kind == "pixels")
    model.learn(40)
    assert model._n_updates > 0
    main = model.replay_buffer.key_buffers[kind]
    proprio = model.replay_buffer.key_buffers["proprio"]
    # each frame once: the first stack of k frames, then one frame per step (20-step episodes, 20 steps per env)
    assert main.frame_stack == 3 and list(main.frames_written) == [3 + 20] * 2
    assert proprio.frame_stack == 1 and list(proprio.frames_written) == [1 + 20] * 2
    action, _ = model.predict(env.reset(), deterministic=True)
    assert action.shape == (2, 2)


def test_dict_buffer_returns_what_was_added_with_n_step_returns():
    space = DictObsEnv("features").observation_space
    frames = np.random.default_rng(0).standard_normal((12, 1, 6)).astype(np.float32)
    obs = [{"features": frames[t : t + 3, 0], "proprio": np.full(4, t, np.float32)} for t in range(10)]
    dict_buffer = DrMDictReplayBuffer(50, space, DictObsEnv().action_space, n_steps=3, gamma=0.5)
    box_buffer = DrMReplayBuffer(50, space["features"], DictObsEnv().action_space, n_steps=3, gamma=0.5)
    for t in range(9):
        batch = [{k: v[None] for k, v in o.items()} for o in (obs[t], obs[t + 1])]
        args = (np.full((1, 2), t, np.float32), np.array([t + 1.0]), np.array([t == 8]), [{}])
        dict_buffer.add(*batch, *args)
        box_buffer.add(batch[0]["features"], batch[1]["features"], *args)
    assert dict_buffer.size() == 9 and dict_buffer.pos == 9
    inds, envs = np.arange(7), np.zeros(7, dtype=np.int64)
    got, reference = dict_buffer._get_samples(inds, env_indices=envs), box_buffer._get_samples(inds, env_indices=envs)
    for t in range(7):
        np.testing.assert_array_equal(got.observations["features"][t].numpy(), obs[t]["features"])
        np.testing.assert_array_equal(got.observations["proprio"][t].numpy(), obs[t]["proprio"])
        np.testing.assert_array_equal(got.next_observations["proprio"][t].numpy(), obs[min(t + 3, 9)]["proprio"])
    for field in ("rewards", "discounts", "dones", "actions"):
        assert th.equal(getattr(got, field), getattr(reference, field))
    assert th.equal(got.next_observations["features"], reference.next_observations)


def test_dict_buffer_starts_an_episode_for_every_key_together():
    space = DictObsEnv("features").observation_space
    buffer = DrMDictReplayBuffer(50, space, DictObsEnv().action_space, n_steps=2, n_step_rule="truncated")
    stack = np.zeros((1, 3, 6), np.float32)

    def add(proprio, next_proprio):
        p, q = np.full((1, 4), proprio, np.float32), np.full((1, 4), next_proprio, np.float32)
        buffer.add({"features": stack, "proprio": p}, {"features": stack, "proprio": q}, np.zeros((1, 2)),
                   np.ones(1), np.zeros(1), [{}])  # fmt: skip

    add(0, 1)
    add(5, 6)  # the features continue (constant), the proprioception does not: a new episode for both keys
    lengths = buffer.primary.window_lengths(np.array([0]), np.array([0]))
    assert list(lengths) == [1]
    assert buffer.key_buffers["features"].obs_frame[1, 0] != buffer.key_buffers["features"].obs_frame[0, 0] + 1


def test_optimize_memory_usage_is_a_no_op_said_once(capsys):
    model = DrM("MlpPolicy", "Pendulum-v1", optimize_memory_usage=True, verbose=1, **FAST)
    assert capsys.readouterr().out.count("optimize_memory_usage=True is a no-op") == 1
    assert isinstance(model.replay_buffer, DrMReplayBuffer) and not model.optimize_memory_usage
    DrM("MultiInputPolicy", DictObsEnv(), optimize_memory_usage=True, **FAST)
    assert "no-op" not in capsys.readouterr().out  # verbose=0


# --- check_env ---------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_check_env_passes_on_make_env_and_pvr_envs():
    from gymnasium.utils.env_checker import check_env as gymnasium_check_env
    from stable_baselines3.common.env_checker import check_env

    from pvrw import make_env
    from pvrw.pvr_wrappers import PVRObservation, create_backbone

    env = make_env("metaworld/reach-v3", resolution=32, seed=0)
    check_env(env)  # before: "Goal conditioned envs ... require the observation space to be gymnasium.spaces.Dict"
    pvr_env = PVRObservation(make_env("metaworld/reach-v3", resolution=32, seed=0),
                             create_backbone("resnet18", weights="random", resolution=32))  # fmt: skip
    check_env(pvr_env)
    gymnasium_check_env(pvr_env)
    # Meta-World's compute_reward is not the env's own, but stays reachable; the simulator's attributes read and write
    task = env.unwrapped
    assert not hasattr(task, "compute_reward")
    assert task.metaworld_env.compute_reward == env.get_wrapper_attr("compute_reward")
    assert task.model is task.metaworld_env.model
    task.max_path_length = 123
    assert task.metaworld_env.max_path_length == 123 and "max_path_length" not in vars(task)
    assert vars(task)["task_name"] == "reach-v3"  # the task's own attributes are its own ...
    assert vars(task.metaworld_env)["task_name"] != "reach-v3"  # ... and leave Meta-World's alone
