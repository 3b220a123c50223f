"""Run configuration: study defaults, layering, validation with the offending key named."""

import inspect

import pytest
import yaml

from pvrw.runs.config import (
    ConfigError,
    RunConfig,
    algo_parameters,
    build_config,
    load_config,
    parse_override,
    save_config,
)


def test_defaults_are_the_study_settings():
    config = build_config()
    # DrM's Meta-World protocol (reference cfgs): frame stack 3, action repeat 2, eval every 10k frames, 10 episodes
    assert (config.algo, config.env, config.pvr) == ("drm", "metaworld/push-v3", "none")
    assert (config.frame_stack, config.action_repeat, config.resolution) == (3, 2, 112)
    assert (config.eval_every, config.eval_episodes) == (10_000, 10)
    # no hyper-parameter is overridden, so DrM's own (reference) defaults apply
    assert config.algo_kwargs == {}
    # frames are env frames: agent steps x action repeat
    assert config.total_timesteps * config.action_repeat == config.frames


def test_layers_route_keys_and_later_layers_win(tmp_path):
    config = build_config(
        {"frames": 5000, "batch_size": 64, "env_kwargs": {"camera": "corner2"}},
        {"batch_size": 128, "env_kwargs.render_quality": "fast", "policy_kwargs": {"hidden_dim": 64}},
    )
    assert config.frames == 5000
    assert config.algo_kwargs == {"batch_size": 128, "policy_kwargs": {"hidden_dim": 64}}
    assert config.env_kwargs == {"camera": "corner2", "render_quality": "fast"}
    nested = build_config({"policy_kwargs": {"hidden_dim": 64}}, {"policy_kwargs.feature_dim": 20})
    assert nested.algo_kwargs == {"policy_kwargs": {"hidden_dim": 64, "feature_dim": 20}}
    with pytest.raises(ConfigError, match="frames.x: dotted keys go into"):
        build_config({"frames.x": 1})


def test_algorithm_arguments_are_checked_against_the_algorithm_that_is_finally_chosen():
    # ent_coef is SAC's, not DrM's: valid only because a later layer selects sac
    config = build_config({"ent_coef": 0.1}, {"algo": "sac"})
    assert config.algo_kwargs == {"ent_coef": 0.1}
    with pytest.raises(ConfigError, match="ent_coef"):
        build_config({"ent_coef": 0.1})


def test_every_drm_argument_is_reachable():
    from pvrw.drm import DrM

    signature = set(inspect.signature(DrM.__init__).parameters)
    assert {"variant", "n_steps", "stddev_schedule", "target_lambda", "expectile"} <= algo_parameters("drm")
    assert algo_parameters("drm") == signature - {"self", "policy", "env", "seed", "device", "tensorboard_log",
                                                  "verbose", "_init_setup_model", "kwargs"}  # fmt: skip


def test_unknown_key_is_named_with_its_source(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("frames: 100\nbatch_sise: 32\n")
    with pytest.raises(ConfigError) as err:
        build_config(yaml.safe_load(path.read_text()), layer_names=[f"config file {path}"])
    assert "batch_sise" in str(err.value) and "bad.yaml" in str(err.value)
    with pytest.raises(ConfigError, match="frames: must be a positive integer"):
        build_config({"frames": -3})
    with pytest.raises(ConfigError, match="algo: unknown algorithm 'ppo'"):
        build_config({"algo": "ppo"})


def test_parse_override_reads_yaml_values():
    assert parse_override("learning_rate=1e-4") == ("learning_rate", 1e-4)
    assert parse_override("video=false") == ("video", False)
    assert parse_override("stddev_schedule=linear(1.0,0.1,500000)") == ("stddev_schedule", "linear(1.0,0.1,500000)")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("frames")


def test_saved_config_round_trips_and_unknown_keys_are_refused(tmp_path):
    config = build_config({"seed": 3, "n_steps": 10, "env_kwargs": {"camera": "corner2"}})
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    data["colour"] = "red"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="'colour'"):
        load_config(tmp_path / "config.yaml")


def test_group_key_ignores_only_the_seed_and_bookkeeping():
    a, b = build_config({"seed": 0}), build_config({"seed": 1, "device": "cpu", "video": False})
    assert a.group_key() == b.group_key()
    assert a.group_key() != build_config({"resolution": 224}).group_key()
    assert RunConfig(pvr="dinov2").variant == "drm/dinov2@112"


def test_precision_key_reaches_drm_and_is_checked():
    from pvrw.runs.training import algo_constructor_kwargs

    config = build_config({"precision": "bf16"})
    assert config.precision == "bf16" and algo_constructor_kwargs(config)["precision"] == "bf16"
    assert "precision" not in algo_constructor_kwargs(build_config())  # fp32: DrM's default
    with pytest.raises(ConfigError, match="precision: must be fp32 or bf16"):
        build_config({"precision": "fp16"})
    with pytest.raises(ConfigError, match="precision: bf16 is a DrM option"):
        build_config({"precision": "bf16", "algo": "sac"})
