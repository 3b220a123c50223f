"""DrMReplayBuffer storage: filled-part pickles, disk-backed arrays, incremental checkpoints that survive SIGKILL."""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle
import signal
import time

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from test_drm_buffers import ACTION_SPACE, FakeStackedEnvs
from test_drm_run import FAST, feature_env, pixel_venv

from pvrw.drm import DrM, replay_disk
from pvrw.drm.buffers import DrMReplayBuffer
from pvrw.drm.replay_disk import StorageError
from pvrw.drm.replay_storage import ARRAY_NAMES

SMALL_CHUNK = 1536  # bytes per journal chunk in these tests: several chunks per array, so chunks are journaled often
KINDS = {
    "pixels": dict(k=3, frame_shape=(3, 8, 8), dtype=np.uint8),
    "features": dict(k=3, frame_shape=(1, 6), dtype=np.float32),
}


def make_buffer(kind="pixels", n_envs=2, capacity=30, rule="reference", storage="memory", path=None, **kwargs):
    spec = KINDS[kind]
    shape = (spec["k"] * spec["frame_shape"][0], *spec["frame_shape"][1:])
    space = spaces.Box(0, 255, shape, np.uint8) if kind == "pixels" else spaces.Box(-np.inf, np.inf, shape, np.float32)
    return DrMReplayBuffer(
        capacity * n_envs, space, ACTION_SPACE, "cpu", n_envs=n_envs, n_steps=3, gamma=0.9, n_step_rule=rule,
        frame_stack=spec["k"], storage=storage, path=path, **kwargs,
    )  # fmt: skip


def make_envs(kind="pixels", n_envs=2, seed=0):
    spec = KINDS[kind]
    return FakeStackedEnvs(n_envs, spec["k"], spec["frame_shape"], spec["dtype"], seed=seed)


def feed(buffers, envs, n):
    for _ in range(n):
        args, _ = envs.step()
        for buffer in buffers:
            buffer.add(*args)


def snapshot(buffer) -> dict:
    state = {name: np.array(getattr(buffer, name)) for name in ARRAY_NAMES}
    state.update(pos=buffer.pos, full=buffer.full, written=buffer.frames_written.copy(), open=buffer.episode_open.copy())
    return state


def assert_same(a, b):
    """Every array (whole capacity) and every counter equal."""
    a, b = (x if isinstance(x, dict) else snapshot(x) for x in (a, b))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def assert_same_samples(a, b, seed=0, batch_size=32):
    np.random.seed(seed)
    x = a.sample(batch_size)
    np.random.seed(seed)
    y = b.sample(batch_size)
    assert all(th.equal(u, v) for u, v in zip(x, y, strict=True))


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(replay_disk, "CHUNK_BYTES", SMALL_CHUNK)


# ------------------------------------------------------------------------------------------- memory: filled part
def test_pickle_holds_only_the_filled_part_and_round_trips():
    buffer = make_buffer(capacity=20_000)
    envs = make_envs()
    feed([buffer], envs, 20)
    data = pickle.dumps(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    stored = sum(getattr(buffer, n)[: buffer._filled_rows(n)].nbytes for n in ARRAY_NAMES)
    assert buffer.nbytes() > 100 * len(data) and len(data) < stored + 20_000
    clone = pickle.loads(data)
    assert_same(buffer, clone)  # the whole capacity: the unused part comes back as it was (zeros, -1)
    assert_same_samples(buffer, clone)
    feed([buffer, clone], envs, 30)  # episodes continue identically
    assert_same(buffer, clone)


@pytest.mark.parametrize("kind", ["pixels", "features"])
def test_pickle_round_trip_after_the_rings_wrap(kind):
    buffer = make_buffer(kind, capacity=20, storage_dtype=np.float16 if kind == "features" else None)
    envs = make_envs(kind)
    feed([buffer], envs, 47)
    assert buffer.full and buffer.frames_written.min() > buffer.frame_capacity
    clone = pickle.loads(pickle.dumps(buffer))
    assert_same(buffer, clone)
    assert_same_samples(buffer, clone)


def test_old_whole_array_pickles_still_load(monkeypatch):
    buffer = make_buffer()
    feed([buffer], make_envs(), 12)
    old_state = {k: v for k, v in buffer.__dict__.items() if k not in ("storage", "path", "_disk")}
    # what pickling a DrMReplayBuffer wrote before: its whole __dict__ (the attributes it had then)
    monkeypatch.setattr(DrMReplayBuffer, "__getstate__", lambda self: old_state)
    data = pickle.dumps(buffer)
    monkeypatch.undo()
    clone = pickle.loads(data)
    assert type(clone) is DrMReplayBuffer and clone.storage == "memory"
    assert_same(buffer, clone)
    assert_same_samples(buffer, clone)


# ---------------------------------------------------------------------------------------------------- disk storage
@pytest.mark.parametrize("kind, storage_dtype", [("pixels", None), ("features", np.float16)])
@pytest.mark.parametrize("rule", ["reference", "truncated"])
def test_disk_storage_holds_and_samples_what_memory_does(tmp_path, small_chunks, kind, storage_dtype, rule):
    memory = make_buffer(kind, rule=rule, storage_dtype=storage_dtype)
    disk = make_buffer(kind, rule=rule, storage_dtype=storage_dtype, storage="disk", path=tmp_path / "replay")
    assert not (tmp_path / "replay").exists()  # created on first use
    envs = make_envs(kind)
    for n in (7, 40, 33):  # not full, wrapped, wrapped again
        feed([memory, disk], envs, n)
        assert_same(memory, disk)
        assert_same_samples(memory, disk, seed=n)
    np.testing.assert_array_equal(memory.observations, disk.observations)
    files = {p.name for p in (tmp_path / "replay").iterdir()}
    assert {f"{name}.npy" for name in ARRAY_NAMES} <= files


def test_checkpoint_reopen_undoes_later_writes_and_continues_identically(tmp_path, small_chunks):
    path = tmp_path / "replay"
    disk, reference = make_buffer(storage="disk", path=path), make_buffer()
    envs = make_envs(seed=3)
    feed([disk, reference], envs, 25)
    assert disk.checkpoint() == 1
    at_checkpoint = snapshot(reference)
    feed([disk, reference], envs, 45)  # overwrites rows the checkpoint holds (both rings wrap)
    disk.close()  # no checkpoint: like a crash
    reopened = DrMReplayBuffer.open(path)
    assert_same(at_checkpoint, reopened)
    replay = make_envs(seed=3)
    feed([], replay, 25)
    feed([reopened], replay, 45)
    assert_same(reference, reopened)
    assert_same_samples(reference, reopened)


def test_open_a_kept_older_checkpoint_and_refuse_a_dropped_or_rewritten_one(tmp_path, small_chunks):
    path = tmp_path / "replay"
    disk, reference = make_buffer(storage="disk", path=path), make_buffer()
    envs = make_envs(seed=5)
    snapshots = {}
    for generation in (1, 2, 3):
        feed([disk, reference], envs, 15)
        pickled = pickle.dumps(disk)  # a checkpoint, and a reference to it
        assert disk._disk.generation == generation and len(pickled) < 1000
        snapshots[generation] = (snapshot(reference), pickled)
    feed([disk], envs, 20)
    with pytest.raises(StorageError, match=r"does not hold checkpoint 1: it keeps \[2, 3\]"):
        DrMReplayBuffer.open(path, generation=1)
    older = pickle.loads(snapshots[2][1])  # the run resumes from the checkpoint before the newest
    assert_same(snapshots[2][0], older)
    with pytest.raises(StorageError, match="closed"):
        disk.sample(4)  # this process reopened the storage: the old object is closed
    assert older.checkpoint() == 3  # a new checkpoint 3, not the dropped one
    with pytest.raises(StorageError, match="rolled back"):
        pickle.loads(snapshots[3][1])


def test_existing_directory_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    buffer = make_buffer(storage="disk", path=tmp_path / "mine")
    with pytest.raises(StorageError, match="already holds files"):
        feed([buffer], make_envs(), 1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="needs path"):
        make_buffer(storage="disk")


def test_disk_full_is_an_error_and_leaves_the_buffer_consistent(tmp_path, monkeypatch, small_chunks):
    disk, reference = make_buffer(storage="disk", path=tmp_path / "replay"), make_buffer()
    envs = make_envs()
    feed([disk, reference], envs, 3)

    def no_space(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    args, _ = envs.step()
    with pytest.raises(OSError, match="No space left for the replay storage"):
        for _ in range(20):  # until a new chunk of rows is needed
            disk.add(*args)
            reference.add(*args)
            args, _ = envs.step()
    assert_same(reference, disk)  # the refused add wrote nothing
    monkeypatch.undo()
    disk.add(*args)


# ---------------------------------------------------------------------------------------------- DrM + SB3 methods
@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
def test_drm_save_load_replay_buffer_on_disk(tmp_path, policy):
    env = feature_env() if policy == "MlpPolicy" else pixel_venv(n_envs=2)
    kwargs = dict(replay_buffer_kwargs=dict(storage="disk", path=str(tmp_path / "replay")))
    model = DrM(policy, env, seed=0, **FAST, **kwargs)
    model.learn(40)
    model.save(tmp_path / "model.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    assert (tmp_path / "buffer.pkl").stat().st_size < 1000  # a reference; the data stays in its files
    expected = snapshot(model.replay_buffer)
    model.learn(20, reset_num_timesteps=False)  # written after the checkpoint: undone by the load below
    loaded = DrM.load(tmp_path / "model.zip", env=env)
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")
    assert_same(expected, loaded.replay_buffer)
    size = loaded.replay_buffer.size()
    loaded.learn(20, reset_num_timesteps=False)
    assert loaded.replay_buffer.size() > size


# --------------------------------------------------------------------------------------------------- SIGKILL
# Writers run in forked child processes (this process has already imported torch: no start-up cost) and are killed
# with SIGKILL, by the test at a random moment or by themselves at a chosen step.
N_ADDS, EVERY, SEED = 200, 20, 11


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _inject(point: str, n: int) -> None:
    """Make this process SIGKILL itself at the n-th occurrence of ``point``."""
    count = [0]

    def hit() -> bool:
        count[0] += 1
        return count[0] == n

    if point in ("torn_journal", "after_journal"):
        journal, write_all = replay_disk.DiskArrays._journal, replay_disk._write_all

        def torn(fd, data):
            write_all(fd, bytes(data)[: len(data) // 2])
            _die()

        def patched(self, *args):
            if point == "torn_journal" and hit():
                replay_disk._write_all = torn
            journal(self, *args)
            if point == "after_journal" and hit():
                _die()

        replay_disk.DiskArrays._journal = patched
    elif point in ("state_tmp", "after_state"):
        replace = os.replace

        def patched_replace(src, dst):
            if point == "state_tmp" and hit():
                _die()
            replace(src, dst)
            if point == "after_state" and hit():
                _die()

        replay_disk.os.replace = patched_replace
    elif point == "rollback":
        read_records = replay_disk._read_records

        def patched_read(path):
            for record in read_records(path):
                if hit():
                    _die()
                yield record

        replay_disk._read_records = patched_read


def _writer(conn, path: str, inject: str, n: int, open_generation: int | None) -> None:
    """Child: add N_ADDS transitions to a new disk buffer, checkpoint every EVERY adds (reporting each through
    ``conn``); or (open_generation) reopen the storage at that checkpoint."""
    if inject:
        _inject(inject, n)
    if open_generation is not None:
        DrMReplayBuffer.open(path, generation=open_generation)
        return
    buffer, envs = make_buffer(storage="disk", path=path), make_envs(seed=SEED)
    buffer.frames  # noqa: B018  (creates the storage: checkpoint 0 holds 0 transitions)
    conn.send("ready")
    for i in range(1, N_ADDS + 1):
        feed([buffer], envs, 1)
        if i % EVERY == 0:
            conn.send(buffer.checkpoint())


def _run_writer(path, inject="", n=0, open_generation=None, kill_after=None) -> tuple[int, list[int]]:
    """:return: the child's exit code and the checkpoints it reported"""
    parent, child = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_writer, args=(child, str(path), inject, n, open_generation))
    proc.start()
    child.close()
    if kill_after is not None:
        assert parent.recv() == "ready"
        time.sleep(kill_after)
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(120)
    messages = []
    try:
        while parent.poll():
            messages.append(parent.recv())
    except EOFError:  # all read
        pass
    return proc.exitcode, [m for m in messages if m != "ready"]


@pytest.fixture(scope="module")
def unbroken():
    """Snapshots of an in-memory buffer fed the writer's stream, after every EVERY adds (index: checkpoint number)."""
    buffer, envs = make_buffer(), make_envs(seed=SEED)
    snapshots = [snapshot(buffer)]
    for _ in range(N_ADDS // EVERY + 3):
        feed([buffer], envs, EVERY)
        snapshots.append(snapshot(buffer))
    return snapshots


def _check_resume(path, unbroken, min_generation=0):
    """Reopen: exactly the checkpoint's content; then continue the stream: exactly the unbroken run."""
    buffer = DrMReplayBuffer.open(path)
    g = buffer._disk.generation
    assert g >= min_generation
    assert_same(unbroken[g], buffer)
    envs = make_envs(seed=SEED)
    feed([], envs, g * EVERY)
    feed([buffer], envs, 2 * EVERY)
    assert_same(unbroken[g + 2], buffer)
    buffer.close()
    return g


def test_sigkill_at_random_moments_resumes_from_the_last_checkpoint(tmp_path, small_chunks, unbroken):
    rng = np.random.default_rng(0)
    generations = []
    for round_ in range(6):
        path = tmp_path / f"replay{round_}"
        exitcode, done = _run_writer(path, kill_after=float(rng.uniform(0.0, 1.5)))
        last = done[-1] if done else 0
        g = _check_resume(path, unbroken, min_generation=last)
        assert g <= last + 1 and (exitcode == -signal.SIGKILL or g == N_ADDS // EVERY)
        generations.append(g)
    assert any(0 < g < N_ADDS // EVERY for g in generations)  # kills landed mid-run


@pytest.mark.parametrize(
    "point, n, committed",
    [
        ("torn_journal", 80, 0),  # killed inside a journal record: its rows were not written yet
        ("after_journal", 80, 0),  # journal record complete, rows partly written
        ("state_tmp", 9, 0),  # flushed, new state written to its temporary file, not renamed
        ("after_state", 9, 1),  # new state renamed into place, new journal not started
    ],
)
def test_sigkill_at_each_step_of_append_and_checkpoint(tmp_path, small_chunks, unbroken, point, n, committed):
    path = tmp_path / "replay"
    exitcode, done = _run_writer(path, point, n)
    assert exitcode == -signal.SIGKILL and len(done) >= 3  # after the rings wrapped
    assert _check_resume(path, unbroken) == done[-1] + committed


def test_sigkill_while_rolling_back_to_an_older_checkpoint(tmp_path, small_chunks, unbroken):
    path = tmp_path / "replay"
    assert _run_writer(path)[0] == 0  # complete: checkpoints 1..10, the newest two kept
    newest = N_ADDS // EVERY
    exitcode, _ = _run_writer(path, "rollback", 3, open_generation=newest - 1)
    assert exitcode == -signal.SIGKILL
    # the interrupted roll-back had already made the older checkpoint the newest one
    assert _check_resume(path, unbroken) == newest - 1


def _holder(conn, path: str) -> None:
    buffer = make_buffer(storage="disk", path=path)
    buffer.checkpoint()
    conn.send("ready")
    time.sleep(60)
    buffer.close()


def test_storage_is_locked_while_another_process_has_it_open(tmp_path):
    path = tmp_path / "replay"
    parent, child = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_holder, args=(child, str(path)))
    proc.start()
    try:
        assert parent.recv() == "ready"
        with pytest.raises(StorageError, match=rf"open in another process \(pid {proc.pid}\)"):
            DrMReplayBuffer.open(path)
    finally:
        proc.kill()
        proc.join()
    DrMReplayBuffer.open(path).close()  # the lock went with the process


def _killed_while_creating(path: str) -> None:
    replay_disk.DiskArrays._write_state = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    feed([make_buffer(storage="disk", path=path)], make_envs(), 1)


def test_a_storage_whose_creation_was_killed_is_created_again_and_its_leftover_removed(tmp_path):
    proc = multiprocessing.get_context("fork").Process(target=_killed_while_creating, args=(str(tmp_path / "replay"),))
    proc.start()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    leftover = tmp_path / f".replay.creating-{proc.pid}"
    assert leftover.is_dir() and not (tmp_path / "replay").exists()
    buffer = make_buffer(storage="disk", path=tmp_path / "replay")
    feed([buffer], make_envs(), 2)
    assert buffer.checkpoint() == 1 and not leftover.exists()
    buffer.close()


def test_drm_replay_buffer_reference_follows_a_moved_directory(tmp_path):
    """The pickle of a disk buffer names its storage relative to the pickle (a run directory moved, or mounted
    elsewhere by a Ray trial restarted on another node)."""
    env = feature_env()
    first = tmp_path / "first"
    model = DrM("MlpPolicy", env, seed=0, **FAST, replay_buffer_kwargs=dict(storage="disk", path=str(first / "replay")))
    model.learn(30)
    model.save_replay_buffer(first / "buffer.pkl")
    expected = snapshot(model.replay_buffer)
    model.replay_buffer.close()
    os.rename(first, tmp_path / "second")
    model.load_replay_buffer(tmp_path / "second" / "buffer.pkl")
    assert model.replay_buffer.path == str(tmp_path / "second" / "replay")
    assert_same(expected, model.replay_buffer)
    model.replay_buffer.close()


def test_sampling_a_disk_buffer_keeps_its_mapped_pages_bounded(tmp_path, monkeypatch):
    """The kernel maps several times what a random read touches: the bound is on the RSS, not on the bytes read."""
    from pvrw.drm import replay_storage

    if replay_storage._rss_file() is None:
        pytest.skip("no /proc/self/status")
    monkeypatch.setattr(replay_storage, "DROP_MAPPINGS_BYTES", 16 << 20)
    monkeypatch.setattr(replay_storage, "CHECK_MAPPED_BYTES", 1 << 20)
    space = spaces.Box(0, 255, (9, 64, 64), np.uint8)
    kwargs = dict(n_steps=3, gamma=0.9, frame_stack=3)
    warm = DrMReplayBuffer(200, space, ACTION_SPACE, "cpu", **kwargs)
    disk = DrMReplayBuffer(20_000, space, ACTION_SPACE, "cpu", storage="disk", path=tmp_path / "replay", **kwargs)
    envs = FakeStackedEnvs(1, 3, (3, 64, 64), np.uint8, seed=0)
    for _ in range(6000):  # 74 MB of frames
        args, _ = envs.step()
        if warm.size() < 200:
            warm.add(*args)
        disk.add(*args)
    warm.sample(64)  # the code paths of sampling are loaded before the RSS is watched
    disk.checkpoint()
    base, peak = replay_storage._rss_file(), 0
    for _ in range(40):  # 40 x 64 x 2 stacks of 36 kB: 180 MB read
        disk.sample(64)
        peak = max(peak, replay_storage._rss_file() - base)
    assert peak < (16 + 5 * 1 + 16) << 20
    disk.close()


def test_a_disk_buffer_warns_about_free_space_when_its_files_are_created_not_when_built(tmp_path, monkeypatch):
    """A model loaded for evaluation builds a buffer it never fills: it says nothing about disk space."""
    import warnings

    from pvrw.drm import replay_storage

    usage = replay_storage.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(replay_storage.shutil, "disk_usage", lambda path: usage._replace(free=100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        buffer = make_buffer(storage="disk", path=tmp_path / "replay")
    with pytest.warns(UserWarning, match=r"The complete replay buffer needs .* free disk space .*files grow as"):
        feed([buffer], make_envs(), 1)
    buffer.close()
    checked = make_buffer(storage="disk", path=tmp_path / "checked")
    checked.space_checked = True  # a run checked what it will store (pvrw.runs.replay.check_replay_space)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed([checked], make_envs(), 1)
    checked.close()
