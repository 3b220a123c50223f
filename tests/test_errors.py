"""User errors are one line in the CLI and one clear exception in the API (issue 10, "One line, not a traceback")."""

import os
import subprocess
import sys
import textwrap

import pytest

from pvrw._gl import GLBackendError, check_gl_environment

# run before pvrw in a child process: ctypes cannot load any library whose name contains $PVRW_TEST_HIDE_LIB, as on
# a machine without that system package
_HIDE_LIBRARY = textwrap.dedent(
    """
    import ctypes, os
    _hidden, _init = os.environ["PVRW_TEST_HIDE_LIB"], ctypes.CDLL.__init__
    def _refuse(self, name, *args, **kwargs):
        if name and _hidden in str(name):
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        _init(self, name, *args, **kwargs)
    ctypes.CDLL.__init__ = _refuse
    """
)


def _run(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    environ.update(env, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code, *args], env=environ, capture_output=True, text=True, timeout=300)


def _cli(args: list[str], env: dict[str, str] | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    return _run(prelude + "\nimport sys\nfrom pvrw.cli import main\nsys.argv[0] = 'pvrw'\nmain()", env or {}, *args)


@pytest.mark.parametrize(
    "backend, library, package", [("osmesa", "libOSMesa", "libosmesa6"), ("egl", "libEGL", "libegl1")]
)
def test_missing_gl_library_is_named_with_its_install_command(backend, library, package):
    result = _run(_HIDE_LIBRARY + "from pvrw import make_env", {"MUJOCO_GL": backend, "PVRW_TEST_HIDE_LIB": library})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot import name" not in result.stderr  # what the lazy export said before
    assert last.startswith("pvrw._gl.GLBackendError: ") and library in last
    assert f"apt-get install -y {package}" in last and "MUJOCO_GL choices: osmesa" in last


def test_missing_gl_library_is_one_line_in_the_cli(tmp_path):
    result = _cli(
        ["train", "--preset", "smoke", "--out", str(tmp_path / "run")],
        {"MUJOCO_GL": "osmesa", "PVRW_TEST_HIDE_LIB": "libOSMesa"},
        prelude=_HIDE_LIBRARY,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "libOSMesa could not be loaded" in result.stderr


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"MUJOCO_GL": "bogus"}, "MUJOCO_GL='bogus' is not a MuJoCo rendering backend; use osmesa"),
        ({"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "egl"}, "PYOPENGL_PLATFORM='egl' contradicts MUJOCO_GL"),
    ],
)
def test_bad_gl_variables(monkeypatch, tmp_path, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(GLBackendError, match=expected):
        check_gl_environment()
    result = _cli(["train", "--preset", "smoke", "--out", str(tmp_path / "run")], env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and expected in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was created


def test_lazy_export_keeps_the_cause_of_an_attribute_error(monkeypatch):
    from pvrw import _lazy

    def import_module(name):
        raise AttributeError("'NoneType' object has no attribute 'glGetError'")

    monkeypatch.setattr(_lazy.importlib, "import_module", import_module)
    getter = _lazy.lazy_getattr("pvrw", {"thing": "pvrw.somewhere"})
    with pytest.raises(ImportError, match="importing pvrw.somewhere .*glGetError"):  # not "cannot import name"
        getter("thing")


# -- a run is checked before anything is created (items: resolution bounds, bare Meta-World names, presets) -------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--pvr", "dinov2", "--weights", "random", "--resolution", "99988"], "resolution: 99988 px is not supported"),
        (["--env", "Pendulum-v1", "--pvr", "dinov2", "--weights", "random", "--resolution", "99988"],
         "cannot run at 99988x99988: the side must be at most 2048"),
        (["--env", "push-v3"], "env: 'push-v3' is a Meta-World task: write it as 'metaworld/push-v3'"),
        (["--preset", "smoke", "--pvr", "dinov2", "--resolution", "64"], "the side must be a multiple of 14"),
    ],
)
def test_train_refuses_before_creating_anything(tmp_path, args, expected):
    from click.testing import CliRunner

    from pvrw.cli import main

    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", *args, "--out", str(out)])
    assert result.exit_code == 2 and expected in result.output, result.output
    assert "training" not in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_backbone_refuses_a_huge_side_before_building_it():
    from pvrw.backbones import create_backbone

    with pytest.raises(ValueError, match="at most 2048"):  # before: a 156 GB position table
        create_backbone("dinov2", weights="random", resolution=99988)


def test_smoke_preset_picks_a_side_the_backbone_takes():
    from pvrw.backbones import get_backbone_cfg
    from pvrw.runs.config import build_config

    notes: list[str] = []
    config = build_config({"pvr": "dinov2", "weights": "random"}, preset="smoke", notes=notes)
    assert config.resolution == 70 and get_backbone_cfg("dinov2").check_resolution(70) == 70  # 64 is not allowed
    assert notes == ["preset smoke: resolution 70, the side nearest to 64 that dinov2 takes (a multiple of 14, "
                     "at least 14)"]
    assert build_config({"pvr": "vc1"}, preset="smoke").resolution == 64  # 64 is a multiple of 16: kept
    assert build_config({"pvr": "dinov2", "resolution": 56}, preset="smoke").resolution == 56  # the user's own


def test_nearest_side():
    from pvrw.backbones import get_backbone_cfg

    dinov2, resnet = get_backbone_cfg("dinov2"), get_backbone_cfg("resnet18")
    assert [dinov2.nearest_side(s) for s in (64, 60, 63, 1, 5000)] == [70, 56, 70, 14, 2044]
    assert [resnet.nearest_side(s) for s in (64, 3)] == [64, 8]


# -- the random-weights notice: once, through warnings ------------------------------------------------------------


def test_random_weights_notice_once_through_warnings(caplog):
    import logging
    import warnings

    import gymnasium as gym

    from pvrw import PVRObservation, RandomWeightsWarning, create_backbone

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_backbone("resnet18", weights="random", resolution=16)
        env = gym.make("Pendulum-v1", render_mode="rgb_array")
        PVRObservation(env, "resnet18", weights="random", resolution=16, source="render").close()
    notices = [w for w in caught if "RANDOM" in str(w.message)]
    assert [w.category for w in notices] == [RandomWeightsWarning] * 2  # one per backbone built
    assert not [r for r in caplog.records if "RANDOM" in r.getMessage()]  # nothing through logging
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", RandomWeightsWarning)
        create_backbone("resnet18", weights="random", resolution=16)
    assert not caught


def test_cli_prints_pvrw_warnings_on_one_line():
    from pvrw import RandomWeightsWarning
    from pvrw.cli import _format_warning

    assert _format_warning("Backbone 'x' ... RANDOM", RandomWeightsWarning, "f.py", 3, "src") == (
        "Warning: Backbone 'x' ... RANDOM\n")
    assert "f.py:3" in _format_warning("other", UserWarning, "f.py", 3, "src")


# -- damaged files --------------------------------------------------------------------------------------------------


@pytest.fixture
def truncated_safetensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "resnet18.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a download cut in the middle
    return path


def test_truncated_safetensors_is_a_clear_error(truncated_safetensors):
    import gymnasium as gym

    from pvrw import PVRObservation
    from pvrw.backbones import WeightsFormatError

    env = gym.make("Pendulum-v1", render_mode="rgb_array")
    with pytest.raises(WeightsFormatError) as info:  # before: safetensors' SafetensorError about a header
        PVRObservation(env, "resnet18", weights=truncated_safetensors, resolution=16, source="render")
    message = str(info.value)
    assert f"Could not read weight file {truncated_safetensors}" in message and "truncated" in message
    assert "download it again (`pvrw download resnet18`)" in message and "\n" not in message
    env.close()


def test_truncated_safetensors_is_one_line_in_the_cli(truncated_safetensors, tmp_path):
    from click.testing import CliRunner

    from pvrw.cli import main

    args = ["train", "--env", "Pendulum-v1", "--pvr", "resnet18", "--weights", str(truncated_safetensors),
            "--resolution", "16", "--out", str(tmp_path / "run")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: Could not read weight file") and "pvrw download resnet18" in error


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A DrM zip and replay buffer, their truncated copies, and a SAC zip."""
    import warnings

    from stable_baselines3 import SAC
    from test_drm_run import FAST, feature_env

    from pvrw.drm import DrM

    folder = tmp_path_factory.mktemp("saved")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DrM("MlpPolicy", feature_env(), seed=0, **FAST)
        model.learn(30)
        model.save(folder / "drm.zip")
        model.save_replay_buffer(folder / "replay_buffer.pkl")
        SAC("MlpPolicy", "Pendulum-v1", buffer_size=100, seed=0).save(folder / "sac.zip")
    for name in ("drm.zip", "replay_buffer.pkl"):
        data = (folder / name).read_bytes()
        (folder / f"cut_{name}").write_bytes(data[: len(data) // 2])
    return folder


def test_drm_load_names_the_problem(saved_models):
    from pvrw.drm import DrM
    from pvrw.drm.saved import SavedModelError

    with pytest.raises(SavedModelError, match=r"sac\.zip holds a SAC model: use SAC\.load"):
        DrM.load(saved_models / "sac.zip")  # before: AttributeError 'SACPolicy' object has no attribute 'value_net'
    with pytest.raises(SavedModelError, match=r"cut_drm\.zip is not a complete DrM model: the file is truncated"):
        DrM.load(saved_models / "cut_drm.zip")  # before: AssertionError: No data found in the saved file
    with pytest.raises(FileNotFoundError) as info:
        DrM.load(saved_models / "nonexistent.zip")
    assert str(info.value).endswith("nonexistent.zip'") and ".zip.zip" not in str(info.value)
    assert isinstance(DrM.load(saved_models / "drm"), DrM)  # SB3's suffix rule still works


def test_drm_replay_buffer_errors_name_the_file(saved_models):
    from pvrw.drm import DrM
    from pvrw.drm.saved import SavedModelError

    model = DrM.load(saved_models / "drm.zip")
    with pytest.raises(FileNotFoundError) as info:
        model.load_replay_buffer(saved_models / "missing.pkl")
    assert str(info.value).endswith("missing.pkl'") and ".pkl.pkl" not in str(info.value)
    with pytest.raises(SavedModelError, match=r"cut_replay_buffer\.pkl is not a complete replay buffer"):
        model.load_replay_buffer(saved_models / "cut_replay_buffer.pkl")
    model.load_replay_buffer(saved_models / "replay_buffer")
    assert model.replay_buffer.size() > 0


@pytest.mark.parametrize("algo, model_file, expected", [
    ("drm", "cut_drm.zip", "is not a complete DrM model: the file is truncated or damaged"),
    ("sac", "drm.zip", "holds a DrM model: use pvrw.drm.DrM.load, not SAC.load"),
])  # fmt: skip
def test_eval_of_a_damaged_checkpoint_is_one_line(saved_models, tmp_path, algo, model_file, expected):
    import json
    import shutil

    from click.testing import CliRunner

    from pvrw.cli import main
    from pvrw.runs.config import build_config, save_config

    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000000030").mkdir(parents=True)
    save_config(build_config({"algo": algo, "env": "Pendulum-v1"}), run / "config.yaml")
    shutil.copy(saved_models / model_file, run / "checkpoints" / "step_0000000030" / "model.zip")
    latest = {"dir": "step_0000000030", "steps": 30, "frames": 30, "episodes": 0, "wall_time": 1.0,
              "has_replay_buffer": False}  # fmt: skip
    (run / "checkpoints" / "latest.json").write_text(json.dumps(latest))
    result = CliRunner().invoke(main, ["eval", str(run), "--episodes", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {run / 'checkpoints'}") and expected in lines[0]


# -- --set values are checked against the constructors' type hints ------------------------------------------------


@pytest.mark.parametrize(
    "item, expected",
    [
        ("batch_size=abc", "--set: batch_size: DrM takes an integer, got 'abc' (str)"),
        ("gamma=abc", "--set: gamma: DrM takes a number or null, got 'abc' (str)"),
        ("learning_rate=[1,2]", "--set: learning_rate: DrM takes a number or a schedule"),
        ("policy_kwargs.hidden_dim=abc", "--set: policy_kwargs.hidden_dim: DrMPolicy takes an integer, got 'abc'"),
        ("buffer_size=1e6", "buffer_size: DrM takes an integer, got 1000000.0 (float) (write 1000000)"),
    ],
)
def test_set_values_are_checked_against_type_hints(tmp_path, item, expected):
    from click.testing import CliRunner

    from pvrw.cli import main
    from pvrw.runs.config import ConfigError, build_config, parse_override

    key, value = parse_override(item)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        build_config({key: value}, layer_names=["--set"])
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--set", item, "--out", str(out)])
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output
    assert not out.exists()  # nothing written: no config.yaml holding the bad value


def test_type_checks_accept_what_the_constructors_take():
    from pvrw.runs.config import build_config

    accepted = {
        "train_freq": [1, "episode"], "stddev_schedule": "linear(1.0,0.1,500000)", "gamma": None,
        "replay_buffer_class": "pvrw.drm.buffers:DrMReplayBuffer", "learning_rate": 3e-4,
        "policy_kwargs": {"hidden_dim": 64, "augment": None},
    }  # fmt: skip
    assert build_config(accepted).algo_kwargs == accepted
    assert build_config({"algo": "sac", "ent_coef": "auto_0.1", "policy_kwargs": {"net_arch": [64, 64]}}).algo == "sac"


def test_cli_restores_the_warning_format():
    import warnings

    from click.testing import CliRunner

    from pvrw.cli import main

    before = warnings.formatwarning
    assert CliRunner().invoke(main, ["plot", "--help"]).exit_code == 0
    assert warnings.formatwarning is before
