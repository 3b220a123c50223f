"""SB3-shaped runs of DrM: every policy, both variants, VecEnv + VecFrameStack, callbacks, evaluation, logging."""

import csv

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium.wrappers import FrameStackObservation
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack, VecTransposeImage, is_vecenv_wrapped

from pvrw.drm import DrM

TINY = dict(hidden_dim=32, feature_dim=8)
FAST = dict(learning_starts=16, batch_size=8, buffer_size=500, policy_kwargs=TINY)



class RandomFrameEnv(gym.Env):
    """Random per-step frames (uint8 RGB channel-last images or float per-frame features), seeded by ``reset``."""

    def __init__(self, frame_shape=(16, 16, 3), dtype=np.uint8, episode_length=24, action_dim=2):
        self.dtype = np.dtype(dtype)
        if self.dtype == np.uint8:
            self.observation_space = gym.spaces.Box(0, 255, frame_shape, np.uint8)
        else:
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, frame_shape, np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (action_dim,), np.float32)
        self.episode_length = episode_length

    def _frame(self):
        if self.dtype == np.uint8:
            return self.np_random.integers(0, 256, self.observation_space.shape, dtype=np.uint8)
        return self.np_random.standard_normal(self.observation_space.shape).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        reward = float(-np.square(action).sum())
        return self._frame(), reward, False, self.t >= self.episode_length, {"is_success": reward > -0.1}


def pixel_venv(n_envs=1, side=16):
    """Channel-last RGB frames stacked by VecFrameStack (SB3 then adds VecTransposeImage): (9, side, side)."""
    return VecFrameStack(DummyVecEnv([lambda: RandomFrameEnv((side, side, 3))] * n_envs), n_stack=3)


def feature_env(frame_shape=(32,)):
    """Per-frame features stacked on a new first axis, as PVRObservation gives: (3, *frame_shape)."""
    return FrameStackObservation(RandomFrameEnv(frame_shape, np.float32), stack_size=3)


@pytest.mark.parametrize("variant", ["drm", "drm_mw"])
def test_run_cnn_frame_stack(variant):
    model = DrM("CnnPolicy", pixel_venv(), variant=variant, seed=0, **FAST)
    assert is_vecenv_wrapped(model.get_env(), VecTransposeImage)
    assert model.observation_space.shape == (9, 16, 16)
    assert model.policy.augment
    model.learn(40)
    assert model._n_updates > 0 and model.dormant_ratio < 1.0  # updated from its initial value 1
    action, _ = model.predict(model.get_env().reset(), deterministic=True)
    assert action.shape == (1, 2) and np.all(np.abs(action) <= 1)
    assert isinstance(model.critic.Q1[1], th.nn.Dropout) == (variant == "drm_mw")


def test_run_mlp_features_with_progress_bar():
    env = feature_env((32,))
    model = DrM("MlpPolicy", env, seed=0, **FAST)
    assert model.observation_space.shape == (3, 32) and not model.policy.augment
    assert model.actor.trunk[0].in_features == 96  # (k, D) flattened
    model.learn(40, progress_bar=True)
    assert model._n_updates > 0


def test_run_mlp_pendulum_on_chosen_device():
    model = DrM("MlpPolicy", "Pendulum-v1", seed=0, device="cpu", **FAST)
    model.learn(40)
    assert model.device == th.device("cpu")
    assert all(p.device == th.device("cpu") for p in model.policy.parameters())
    assert model.predict(np.zeros(3, np.float32), deterministic=True)[0].shape == (1,)


def test_run_pieg_spatial_features():
    env = feature_env((128, 2, 2))
    model = DrM("PiegPolicy", env, seed=0, **FAST)
    assert model.observation_space.shape == (3, 128, 2, 2)
    assert model.policy.features_extractor.fc.in_features == 2 * 2 * 128 * 2 * 2  # current frames + differences
    before = model.policy.features_extractor.fc.weight.detach().clone()
    model.learn(40)
    assert not th.equal(before, model.policy.features_extractor.fc.weight)  # the head trains (critic loss)


def test_multi_env_vec_frame_stack_and_perturbation_crossing():
    model = DrM("CnnPolicy", pixel_venv(n_envs=2), seed=0, dormant_perturb_interval=15, **FAST)
    model.learn(60)
    assert model.replay_buffer.n_envs == 2
    # one update per train_freq = 2 transitions as in the reference: 2 gradient steps per 2-steps-per-env rollout
    assert model.gradient_steps == 2
    assert model._n_updates == (60 - FAST["learning_starts"]) // 2
    # num_timesteps grows by 2 per env step and updates happen every 2 env steps (4 timesteps), so multiples of 15
    # are never hit exactly: the perturbation triggers when one is crossed.
    steps = [p["step"] for p in model.perturbations]
    assert steps and all(s % 4 == 0 for s in steps)
    assert [s // 15 for s in steps] == sorted({s // 15 for s in steps})


def test_callbacks_and_evaluation(tmp_path):
    model = DrM("MlpPolicy", feature_env(), seed=0, **FAST)
    eval_env = DummyVecEnv([lambda: Monitor(feature_env())])
    checkpoint = CheckpointCallback(save_freq=30, save_path=str(tmp_path / "ckpt"), save_replay_buffer=True)
    evaluation = EvalCallback(eval_env, n_eval_episodes=2, eval_freq=30, best_model_save_path=str(tmp_path / "best"))
    model.learn(60, callback=[checkpoint, evaluation])
    assert (tmp_path / "ckpt" / "rl_model_30_steps.zip").exists()
    assert (tmp_path / "ckpt" / "rl_model_replay_buffer_30_steps.pkl").exists()
    assert (tmp_path / "best" / "best_model.zip").exists()
    mean_reward, _ = evaluate_policy(model, eval_env, n_eval_episodes=2)
    assert np.isfinite(mean_reward) and mean_reward <= 0


def test_logging_dormant_ratio_and_losses(tmp_path):
    env = gym.wrappers.TimeLimit(RandomFrameEnv((5,), np.float32, episode_length=1000), max_episode_steps=12)
    model = DrM("MlpPolicy", env, seed=0, dormant_perturb_interval=20, **FAST)
    model.set_logger(configure(str(tmp_path), ["csv", "tensorboard"]))
    model.learn(60, log_interval=1)
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    keys = set(rows[-1])
    for key in ("actor_dormant_ratio", "stddev", "lambda", "perturb_factor", "n_perturbations", "critic_loss",
                "actor_loss", "value_loss", "critic_target_q", "learning_rate"):  # fmt: skip
        assert f"train/{key}" in keys
    last = [row for row in rows if row["train/n_perturbations"]][-1]
    assert 2 <= float(last["train/n_perturbations"]) <= len(model.perturbations)
    assert 0 <= float(last["train/actor_dormant_ratio"]) <= 1
    assert list(tmp_path.glob("events.out.tfevents*"))


def test_encoder_gets_gradients_from_the_critic_loss_only():
    model = DrM("CnnPolicy", pixel_venv(), seed=0, **FAST)
    model.learn(20)
    encoder = model.policy.features_extractor
    backward_passes = []

    def count_backward_passes(_module, _inputs, output):
        if output.requires_grad:
            output.register_hook(lambda grad: backward_passes.append(1))

    encoder.register_forward_hook(count_backward_passes)
    model._update(model.replay_buffer.sample(8), model.num_timesteps)
    assert len(backward_passes) == 1  # value and actor losses see detached features; next_obs is encoded without grad


def test_training_and_eval_modes():
    model = DrM("CnnPolicy", pixel_venv(), variant="drm_mw", seed=0, **FAST)
    model.policy.set_training_mode(False)
    assert not model.critic.training and model.critic_target.training  # target dropout stays on, as in the reference
    model.policy.set_training_mode(True)
    assert model.critic.training


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="CnnPolicy needs image observations"):
        DrM("CnnPolicy", feature_env(), **FAST)
    with pytest.raises(ValueError, match="k>=2"):
        DrM("PiegPolicy", FrameStackObservation(RandomFrameEnv((8, 2, 2), np.float32), 1), **FAST)
    with pytest.raises(ValueError, match="Unknown DrM variant"):
        DrM("MlpPolicy", "Pendulum-v1", variant="drq")
    with pytest.raises(ValueError, match="stddev_type"):
        DrM("MlpPolicy", "Pendulum-v1", stddev_type="max")
    with pytest.raises(ValueError, match="augment=False"):
        DrM(
            "MlpPolicy",
            feature_env(),
            policy_kwargs=dict(augment=True),
            **{k: v for k, v in FAST.items() if k != "policy_kwargs"},
        )


@pytest.mark.parametrize("buffer_class, n_steps", [(NStepReplayBuffer, 3), (ReplayBuffer, 1)])
def test_sb3_replay_buffers(buffer_class, n_steps):
    kwargs = {"n_steps": n_steps, "gamma": 0.99} if buffer_class is NStepReplayBuffer else {}
    model = DrM("MlpPolicy", feature_env(), replay_buffer_class=buffer_class, replay_buffer_kwargs=kwargs, n_steps=n_steps,
                seed=0, **FAST)  # fmt: skip
    model.learn(30)
    assert type(model.replay_buffer) is buffer_class and model._n_updates > 0


@pytest.mark.parametrize("variant", ["drm", "drm_mw"])
def test_bf16_precision_keeps_fp32_master_state(variant):
    import pvrw.drm.drm as drm_module

    if not drm_module.bf16_supported(th.device("cpu")):
        pytest.skip("this CPU has no bf16 support")
    model = DrM("CnnPolicy", pixel_venv(), variant=variant, precision="bf16", seed=0, device="cpu", **FAST)
    conv_dtypes, q_dtypes, out_dtypes = [], [], set()
    model.policy.features_extractor.convnet[0].register_forward_hook(lambda _m, _i, out: conv_dtypes.append(out.dtype))
    model.critic.Q1[0].register_forward_hook(lambda _m, _i, out: q_dtypes.append(out.dtype))
    for head in (model.critic.Q1, model.critic.Q2, model.actor.policy, model.value_net.V):
        head[-1].register_forward_hook(lambda _m, _i, out: out_dtypes.add(out.dtype))
    model.learn(40)
    assert model._n_updates > 0 and 0.0 <= model.dormant_ratio < 1.0
    assert th.bfloat16 in conv_dtypes and th.bfloat16 in q_dtypes  # the encoder and heads ran under autocast
    assert out_dtypes == {th.float32}  # Q, V and the action mean at full precision
    for optimizer in model.policy.optimizers:
        for group in optimizer.param_groups:
            for param in group["params"]:
                assert param.dtype == th.float32
                assert all(v.dtype == th.float32 for v in optimizer.state[param].values() if v.is_floating_point())
    assert model.precision == "bf16"
    assert model.policy.aug.method == "index"  # bf16's default shift; a choice in policy_kwargs is kept
    chosen = DrM(
        "CnnPolicy", pixel_venv(), precision="bf16", policy_kwargs=dict(aug_method="grid_sample"), buffer_size=100
    )
    assert chosen.policy.aug.method == "grid_sample"


def test_precision_falls_back_to_fp32_without_bf16(monkeypatch):
    import pvrw.drm.drm as drm_module

    monkeypatch.setattr(drm_module, "bf16_supported", lambda device: False)
    with pytest.warns(UserWarning, match="no bf16 support: DrM runs in fp32"):
        model = DrM("MlpPolicy", feature_env(), precision="bf16", seed=0, **FAST)
    assert model.precision == "fp32"
    assert DrM("CnnPolicy", pixel_venv(), precision="bf16", buffer_size=100).policy.aug.method == "grid_sample"
    with pytest.raises(ValueError, match="Unknown precision 'fp16'"):
        DrM("MlpPolicy", feature_env(), precision="fp16", seed=0, **FAST)


def test_index_shift_trains_and_is_saved(tmp_path):
    model = DrM("CnnPolicy", pixel_venv(), policy_kwargs=dict(TINY, aug_method="index"), seed=0,
                **{k: v for k, v in FAST.items() if k != "policy_kwargs"})  # fmt: skip
    assert model.policy.aug.method == "index"
    model.learn(40)
    assert model._n_updates > 0
    model.save(tmp_path / "model.zip")
    assert DrM.load(tmp_path / "model.zip").policy.aug.method == "index"
    with pytest.raises(ValueError, match="Unknown random-shift method"):
        DrM("CnnPolicy", pixel_venv(), policy_kwargs=dict(TINY, aug_method="bilinear"), buffer_size=100)
