"""metrics.csv: append-only rows that survive a kill, and truncation back to a checkpoint."""

import csv

import pytest

from pvrw.runs.metrics import FIELDS, MetricsWriter, read_metrics, truncate_metrics


def test_rows_are_on_disk_after_each_write_and_partial_lines_are_dropped(tmp_path):
    path = tmp_path / "metrics.csv"
    writer = MetricsWriter(path)
    writer.write(kind="train", frames=20, steps=10, episode=1, reward=1.5, success=1.0, success_final=0.0)
    # read while the writer is still open: the row is already there
    rows = read_metrics(path)
    assert rows == [dict.fromkeys(FIELDS) | {"kind": "train", "frames": 20, "steps": 10, "episode": 1, "reward": 1.5,
                                              "success": 1.0, "success_final": 0.0}]  # fmt: skip
    writer.write(kind="eval", frames=40, steps=20, episode=2, reward=-0.25, episodes=3)
    writer.close()
    with open(path, "a") as f:  # what a kill in the middle of a write leaves
        f.write("train,60,30,3,0.1,2.")
    assert [r["frames"] for r in read_metrics(path)] == [20, 40]
    assert [r["kind"] for r in read_metrics(path, kind="eval")] == ["eval"]
    with pytest.raises(KeyError, match="colour"):
        MetricsWriter(path).write(kind="train", colour=1)


def test_truncate_keeps_rows_up_to_the_checkpoint_and_writing_continues(tmp_path):
    path = tmp_path / "metrics.csv"
    with MetricsWriter(path) as writer:
        for i in range(1, 6):
            writer.write(kind="train", frames=2 * 10 * i, steps=10 * i, episode=i)
    with open(path, "a") as f:
        f.write("train,120,60,6")  # cut row
    assert truncate_metrics(path, max_steps=30) == 3
    with MetricsWriter(path) as writer:  # appending after truncation writes no second header
        writer.write(kind="train", frames=80, steps=40, episode=4)
    with open(path) as f:
        lines = list(csv.reader(f))
    assert lines[0] == list(FIELDS)
    assert [int(r[2]) for r in lines[1:]] == [10, 20, 30, 40]


def test_truncate_to_the_rows_a_checkpoint_counted_drops_a_later_row_of_the_same_step(tmp_path):
    """A row written after a checkpoint at that checkpoint's step (the final evaluation) is cut too: counting steps
    kept it, and the resumed run wrote it a second time."""
    path = tmp_path / "metrics.csv"
    with MetricsWriter(path) as writer:
        for i in range(1, 4):
            writer.write(kind="train", frames=10 * i, steps=10 * i, episode=i)
        at_checkpoint = writer.rows
        writer.write(kind="eval", frames=30, steps=30, episode=3)
    assert at_checkpoint == 3
    with open(path, "a") as f:
        f.write("train,40,40")  # cut row
    with MetricsWriter(path) as writer:
        assert writer.rows == 4  # complete rows only
    assert truncate_metrics(path, max_steps=30, rows=at_checkpoint) == 3
    assert [r["kind"] for r in read_metrics(path)] == ["train"] * 3
    with MetricsWriter(path) as writer:
        assert writer.rows == 3
