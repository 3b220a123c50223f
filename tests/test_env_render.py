"""Rendering: upright orientation from camera geometry, several envs in one process, garbage collection, quality,
and a clear error when the renderer cannot start."""

import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from pvrw.envs import make_env

RES = 64


def _project(model, data, camera: str, point: np.ndarray, res: int) -> np.ndarray:
    """(row, col) of a world point in the true pinhole image of a MuJoCo camera (x right, y up, looking along -z)."""
    cam = model.camera(camera).id
    rel = data.cam_xmat[cam].reshape(3, 3).T @ (point - data.cam_xpos[cam])
    focal = (res / 2) / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2)
    return np.array([res / 2 - focal * rel[1] / -rel[2], res / 2 + focal * rel[0] / -rel[2]])


def _green_centroid(frame_hwc: np.ndarray) -> np.ndarray:
    f = frame_hwc.astype(int)
    rows, cols = np.nonzero((f[..., 1] > 120) & (f[..., 0] < 90) & (f[..., 2] < 90))
    assert len(rows) >= 3, "goal marker not visible"
    return np.array([rows.mean() + 0.5, cols.mean() + 0.5])


def _rotate_point(rc: np.ndarray, quarter_turns: int, res: int) -> np.ndarray:
    r, c = rc
    for _ in range(quarter_turns % 4):  # np.rot90 (counter-clockwise) on continuous coordinates
        r, c = res - c, r
    return np.array([r, c])


@pytest.mark.parametrize("seed", [0, 1])
def test_corner4_frames_are_upright_and_not_mirrored(seed):
    """The green goal marker, moved to several places, must appear where an upright, unmirrored view puts it.

    Geometry alone decides the expected place: project the marker with the camera's pose, then apply the proper
    rotation (no reflection) that makes the world's up direction point up in the image.
    """
    env = make_env("metaworld/push-v3", resolution=RES, frame_stack=1, seed=seed, render_quality="fast")
    raw = env.unwrapped
    raw.model.site_size[raw.model.site("goal").id, 0] = 0.03  # a bigger marker: easy to find at 64 px
    obs, _ = env.reset()
    goal = raw.data.site_xpos[raw.model.site("goal").id].copy()
    up_rc = _project(raw.model, raw.data, "corner4", goal + [0, 0, 0.1], RES) - _project(
        raw.model, raw.data, "corner4", goal, RES)
    turns = min(range(4), key=lambda k: _rotate_point(up_rc, k, 0)[0])  # world-up pointing most upward
    expected_all = []
    for i, offset in enumerate(([0, 0, 0], [0, 0, 0.2], [0.15, 0, 0.05], [0, -0.1, 0.15])):
        raw.data.site("goal").xpos = goal + offset  # where MuJoCo draws the site from
        frame = obs.transpose(1, 2, 0) if i == 0 else env.render()
        expected = _rotate_point(_project(raw.model, raw.data, "corner4", goal + offset, RES), turns, RES)
        found = _green_centroid(frame)
        assert np.abs(found - expected).max() < 2, (offset, found, expected)
        expected_all.append(expected)
    # the check discriminates: a vertically flipped or a mirrored frame would put some marker elsewhere
    expected_all = np.array(expected_all)
    assert np.abs(expected_all[:, 0] - (RES - expected_all[:, 0])).max() > 8
    assert np.abs(expected_all[:, 1] - (RES - expected_all[:, 1])).max() > 8

    legacy = make_env("metaworld/push-v3", resolution=RES, frame_stack=1, seed=seed, render_quality="fast",
                      orientation="legacy")
    legacy.unwrapped.model.site_size[legacy.unwrapped.model.site("goal").id, 0] = 0.03
    legacy_obs, _ = legacy.reset()
    assert np.array_equal(legacy_obs, obs[:, :, ::-1])  # legacy = mujoco-py's view: upright but mirrored
    env.close(), legacy.close()


def test_fast_rendering_is_close_to_full_but_not_identical():
    full = make_env("metaworld/drawer-open-v3", resolution=32, frame_stack=1, seed=0)
    fast = make_env("metaworld/drawer-open-v3", resolution=32, frame_stack=1, seed=0, render_quality="fast")
    a, _ = full.reset()
    b, _ = fast.reset()
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.any() and diff.mean() < 20  # shadows and anti-aliasing only
    full.close(), fast.close()


def test_several_envs_in_one_process_render_their_own_scenes_and_survive_gc():
    push = make_env("metaworld/push-v3", resolution=48, frame_stack=1, seed=0, render_quality="fast")
    drawer = make_env("metaworld/drawer-open-v3", resolution=48, frame_stack=1, seed=0, render_quality="fast")
    push_obs, _ = push.reset()
    drawer_obs, _ = drawer.reset()
    changed = np.abs(push_obs.astype(int) - drawer_obs.astype(int)).max(axis=0) > 40
    assert changed.sum() > 30  # different scenes (the drawer's box, the puck)
    for _ in range(2):  # interleaved renders keep giving each env its own image
        assert np.array_equal(push.render().transpose(2, 0, 1), push_obs)
        assert np.array_equal(drawer.render().transpose(2, 0, 1), drawer_obs)

    # garbage-collecting one env (without close) must not blank the other
    del push
    gc.collect()
    assert np.array_equal(drawer.render().transpose(2, 0, 1), drawer_obs)
    # nor must closing one that was created later, nor creating another
    extra = make_env("metaworld/push-v3", resolution=48, frame_stack=1, seed=1, render_quality="fast")
    extra_obs, _ = extra.reset()
    assert np.array_equal(drawer.render().transpose(2, 0, 1), drawer_obs)
    extra.close()
    del extra
    gc.collect()
    obs, *_ = drawer.step(np.zeros(4, np.float32))
    assert obs.mean() > 20
    assert np.array_equal(drawer.render().transpose(2, 0, 1), obs)
    assert extra_obs.mean() > 20
    drawer.close()


def test_renderer_that_cannot_start_names_the_backend():
    """glfw needs a display: without one the first render must fail with a clear, actionable message."""
    code = (
        "import pvrw\n"
        "from pvrw.envs import make_env\n"
        "from pvrw.envs.rendering import RendererUnavailableError\n"
        "env = make_env('metaworld/reach-v3', resolution=16, frame_stack=1, seed=0)\n"
        "try:\n"
        "    env.reset()\n"
        "except RendererUnavailableError as exc:\n"
        "    print('ERROR:', exc)\n"
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYOPENGL_PLATFORM")}
    environ["MUJOCO_GL"] = "glfw"
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)
    message = out.stdout
    assert "ERROR:" in message, out.stdout + out.stderr
    assert "MUJOCO_GL='glfw'" in message and "MUJOCO_GL=osmesa" in message
