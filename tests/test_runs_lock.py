"""Run directories lose nothing: one process at a time uses one (its lock), and pvrw writes and deletes only its own
files (``--out`` into a folder of the user's, ``--overwrite``, a fresh start), with the user's umask."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_runs_tinyenv  # noqa: F401  (registers the tiny envs)
from click.testing import CliRunner

from pvrw.cli import main
from pvrw.runs.config import build_config
from pvrw.runs.layout import LOCK_FILE, RunDir, RunDirError, RunStatus
from pvrw.runs.lock import RunLockedError, run_lock
from pvrw.runs.metrics import read_metrics
from pvrw.runs.training import run_training

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
HOST = socket.gethostname()
TINY = [
    "--threads", "1", "--learning-starts", "20", "--batch-size", "8", "--buffer-size", "100", "--eval-episodes", "1",
    "--set", "policy_kwargs={hidden_dim: 16, feature_dim: 8}", "--no-progress",
]  # fmt: skip
TINY_CONFIG = {
    "env": "test_runs_tinyenv:TinyState-v0", "threads": 1, "learning_starts": 20, "batch_size": 8, "buffer_size": 100,
    "eval_episodes": 1, "policy_kwargs": {"hidden_dim": 16, "feature_dim": 8},
}  # fmt: skip
#: a process that holds a run directory's lock until its stdin closes, as `pvrw train` would
HOLDER = (
    "import sys\nfrom pvrw.runs.lock import run_lock\n"
    "with run_lock(sys.argv[1], command='pvrw train'):\n    print('locked', flush=True)\n    sys.stdin.read()\n"
)


def pvrw(*args: str) -> list[str]:
    return [sys.executable, "-c", "from pvrw.cli import main; main()", *args]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def hold(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=ENV, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout.readline() == "locked\n", proc.communicate()[0]
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(60) == 0


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_a_second_train_on_the_same_out_is_refused_naming_the_first(tmp_path):
    run, gate = tmp_path / "run", tmp_path / "gate"
    args = ["train", "--out", str(run), "--env", "test_runs_tinyenv:GatedState-v0",
            "--set", f"env_kwargs={{gate: {gate}}}", "--frames", "40", "--eval-every", "0", "--no-video", *TINY]  # fmt: skip
    first = subprocess.Popen(pvrw(*args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the first run is set up and waits at its first step until the gate exists
        while not ((run / "config.yaml").is_file() and f'"pid": {first.pid}' in _read(run / LOCK_FILE)):
            assert first.poll() is None, first.communicate()[0]
            time.sleep(0.05)
        for second in (args, ["train", "--resume", str(run), "--no-progress"]):
            refused = subprocess.run(pvrw(*second), check=False, env=ENV, capture_output=True, text=True, timeout=120)
            assert refused.returncode == 1
            line = one_line(refused.stdout + refused.stderr)
            assert f"{run} is in use by pvrw train (pid {first.pid} on host {HOST}, since " in line
            assert line.endswith("wait for it or stop it")
        assert first.poll() is None
    finally:
        gate.touch()
        output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output
    assert "finished 40 frames" in output and RunStatus.read(run).state == "finished"
    assert [r["frames"] for r in read_metrics(run / "metrics.csv", "eval")] == [40]  # one run's rows, once
    assert not (run / LOCK_FILE).exists()  # released


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_lock_whose_holder_died_is_taken_over_with_a_note(tmp_path):
    run = tmp_path / "run"
    holder = hold(run)
    expected = rf"is in use by pvrw train \(pid {holder.pid} on host {HOST}, since"
    with pytest.raises(RunLockedError, match=expected), run_lock(run):
        pass
    holder.kill()
    holder.wait(60)
    assert f'"pid": {holder.pid}' in (run / LOCK_FILE).read_text()  # the dead process could not remove it

    result = invoke("train", "--out", str(run), "--env", "test_runs_tinyenv:TinyState-v0", "--frames", "20",
                    "--eval-every", "0", "--no-video", *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and f"taking over the lock of pvrw train (pid {holder.pid} on host {HOST}" in notes[0]
    assert notes[0].endswith("which is no longer running")
    assert RunStatus.read(run).finished and not (run / LOCK_FILE).exists()


def test_the_os_lock_decides_for_a_lock_file_of_another_host(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 4242, "command": "pvrw train"}))
    notes = []
    with run_lock(tmp_path, note=notes.append):  # nobody holds its OS lock: its holder is gone
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and "pvrw train (pid 4242 on host elsewhere)" in notes[0]


def test_without_os_locks_the_lock_file_alone_decides(tmp_path, monkeypatch):
    import pvrw.runs.lock

    monkeypatch.setattr(pvrw.runs.lock, "_os_lock", lambda fd: None)  # a filesystem without record locks
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 4242, "command": "pvrw train"}))
    with (
        pytest.raises(RunLockedError, match=f"has no locks: remove {lock} once that process is gone"),
        run_lock(tmp_path),
    ):
        pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": HOST, "pid": dead.pid, "command": "pvrw eval"}))
    notes = []
    with run_lock(tmp_path, command="pvrw train", note=notes.append):
        assert len(notes) == 1 and f"pvrw eval (pid {dead.pid} on host {HOST})" in notes[0]
        # another process (this one's PID is alive) is refused by the file alone
        with pytest.raises(RunLockedError, match=rf"in use by pvrw train \(pid {os.getpid()} on host {HOST}"):
            pvrw.runs.lock._acquire(RunDir(tmp_path), "pvrw eval", notes.append)
    assert not lock.exists()


def test_the_lock_is_reentrant_in_its_thread_only(tmp_path):
    import threading

    with run_lock(tmp_path):
        with run_lock(tmp_path):  # pvrw train holds it, then run_training takes it again
            pass
        assert (tmp_path / LOCK_FILE).exists()
        errors = []
        thread = threading.Thread(target=lambda: errors.append(_try_lock(tmp_path)))
        thread.start()
        thread.join()
        assert "another thread of this process" in str(errors[0])
    assert not (tmp_path / LOCK_FILE).exists()


def _try_lock(path: Path) -> Exception | None:
    try:
        with run_lock(path):
            return None
    except RunLockedError as err:
        return err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    config = build_config(TINY_CONFIG, {"frames": 40, "eval_every": 20, "checkpoint_every": 20})
    assert run_training(config, run).finished
    return run


def test_eval_is_refused_while_a_train_holds_the_run(trained_run):
    holder = hold(trained_run)
    try:
        result = invoke("eval", str(trained_run), "--episodes", "1")
        assert result.exit_code == 1
        assert f"in use by pvrw train (pid {holder.pid} on host {HOST}" in one_line(result.output)
        assert not (trained_run / "eval.json").exists()
    finally:
        release(holder)
    assert invoke("eval", str(trained_run), "--episodes", "1").exit_code == 0
    assert (trained_run / "eval.json").is_file() and not (trained_run / LOCK_FILE).exists()


def test_a_sweep_leaves_a_run_in_use_to_its_holder(tmp_path):
    args = ["sweep", "--tasks", "test_runs_tinyenv:TinyState-v0", "--pvr", "none", "--resolution", "36", "--seeds",
            "2", "--algo", "sac", "--frames", "20", "--root", str(tmp_path), "--no-progress", "--set", "eval_every=0",
            "--set", "eval_episodes=1", "--set", "video=false", "--set", "learning_starts=10",
            "--set", "batch_size=8", "--set", "buffer_size=100", "--set", "threads=1"]  # fmt: skip
    busy = tmp_path / "test_runs_tinyenv:TinyState-v0" / "sac_none_36" / "seed_0"
    holder = hold(busy)
    try:
        result = invoke(*args)
    finally:
        release(holder)
    assert result.exit_code == 0, result.output
    assert f"[in use by another process, left to it] {busy}" in result.output
    assert f"is in use by pvrw train (pid {holder.pid}" in result.output
    assert "1 finished now, 0 failed, 1 in use by another process" in result.output
    assert not (busy / "status.json").exists()  # its holder's files are left alone
    states = {r["seed"]: r["state"] for r in json.loads((tmp_path / "sweep.json").read_text())["runs"]}
    assert states == {0: "pending", 1: "finished"}
    assert "1 already finished, 1 finished now" in invoke(*args).output  # once released, the next sweep runs it


def _user_folder(root: Path) -> dict[str, bytes]:
    (root / "videos").mkdir(parents=True)
    for name, data in {"notes.txt": b"my notes", "metrics.csv": b"a,b\n1,2\n", "plot.png": b"\x89PNG mine",
                       "videos/holiday.mp4": b"holiday"}.items():  # fmt: skip
        (root / name).write_bytes(data)
    return files(root)


def test_out_into_a_folder_of_the_users_files_is_refused_and_nothing_is_touched(tmp_path):
    folder = tmp_path / "mine"
    before = _user_folder(folder)
    for extra in ([], ["--overwrite"]):
        result = invoke("train", "--out", str(folder), "--env", "test_runs_tinyenv:TinyState-v0", "--frames", "20",
                        *TINY, *extra)  # fmt: skip
        assert result.exit_code == 1
        line = one_line(result.output)
        assert f"{folder} is not empty and holds no pvrw run (found metrics.csv, notes.txt, plot.png, videos/)" in line
        assert files(folder) == before and sorted(p.name for p in folder.iterdir()) == sorted(
            ["notes.txt", "metrics.csv", "plot.png", "videos"]
        )
    # the library (the sweeps' way in) refuses it too
    with pytest.raises(RunDirError, match="holds no pvrw run"):
        run_training(build_config(TINY_CONFIG, {"frames": 20}), folder)
    assert files(folder) == before


def test_overwrite_removes_only_the_files_pvrw_wrote(tmp_path):
    run = tmp_path / "run"
    common = ["--out", str(run), "--env", "test_runs_tinyenv:TinyState-v0", "--frames", "40", "--eval-every", "20",
              "--checkpoint-every", "20", *TINY]  # fmt: skip
    assert invoke("train", *common).exit_code == 0
    assert invoke("eval", str(run), "--episodes", "1", "--video").exit_code == 0
    assert sorted(p.name for p in (run / "videos").iterdir()) == [
        "eval_0000000020.mp4", "eval_0000000040.mp4", "eval_cli_0000000040.mp4"
    ]  # fmt: skip
    (run / "notes.txt").write_text("keep me")
    (run / "videos" / "holiday.mp4").write_bytes(b"holiday")

    refused = invoke("train", *common)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    result = invoke("train", *common, "--overwrite", "--seed", "7", "--no-video")
    assert result.exit_code == 0, result.output
    assert (run / "notes.txt").read_text() == "keep me" and (run / "videos" / "holiday.mp4").read_bytes() == b"holiday"
    assert sorted(p.name for p in (run / "videos").iterdir()) == ["holiday.mp4"]  # pvrw's videos went, not the user's
    assert not (run / "eval.json").exists()
    assert RunStatus.read(run).attempts == 1  # a new run (another seed: the old config.yaml is gone)
    assert [r["frames"] for r in read_metrics(run / "metrics.csv", "eval")] == [20, 40]


def test_a_fresh_start_keeps_the_users_videos(tmp_path):
    """A run that died before its first checkpoint starts again from frame 0: it drops its own videos only."""
    config = build_config(TINY_CONFIG, {"frames": 40, "eval_every": 20, "checkpoint_every": 0})
    rd = RunDir(tmp_path / "run")
    run_training(config, rd.root)
    import shutil

    shutil.rmtree(rd.checkpoints)
    RunStatus(state="failed").write(rd)
    (rd.videos / "holiday.mp4").write_bytes(b"holiday")
    assert run_training(config, rd.root).finished
    assert sorted(p.name for p in rd.videos.iterdir()) == ["eval_0000000020.mp4", "eval_0000000040.mp4", "holiday.mp4"]
    assert (rd.videos / "holiday.mp4").read_bytes() == b"holiday"


@pytest.mark.parametrize("umask, mode", [(0o027, 0o640), (0o002, 0o664)])
def test_run_files_honour_the_umask(tmp_path, umask, mode):
    code = (
        f"import os, sys\nfrom pathlib import Path\nos.umask({umask})\nfrom pvrw.runs.layout import atomic_write_json\n"
        "atomic_write_json(Path(sys.argv[1]), {'a': 1})\nprint(oct(os.stat(sys.argv[1]).st_mode & 0o777))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "status.json")], env=ENV, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == oct(mode)
