"""A test hook: SIGKILL the training process at a named point, to test that a kill anywhere loses nothing.

Set ``PVRW_TEST_KILL_AT=<point>`` (or ``<point>@<frames>`` to pick the one at that frame count) in the environment
of a training process; it kills itself with SIGKILL when it reaches that point, as a crash or an OOM kill would.
Unset (always, outside tests) it does nothing. The points, in the order a run meets them:

- ``step@F``: an agent step ended (its episode row, if any, is written; the transition is not yet stored).
- ``eval@F``: an evaluation ran; its row is not written. ``eval-done@F``: its row is written.
- ``checkpoint-files@F``: a checkpoint's files are complete in their temporary directory, not yet renamed.
- ``checkpoint-renamed@F``: the checkpoint directory is in place; ``latest.json`` still names the previous one.
- ``checkpoint-committed@F``: ``latest.json`` names it; the previous checkpoint is not yet deleted.
- ``checkpoint-done@F``: the checkpoint is complete and recorded in ``status.json``.
- ``finishing``: the run's last checkpoint is written; ``status.json`` does not say "finished" yet.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "PVRW_TEST_KILL_AT"


def kill_point(point: str, frames: int | None = None) -> None:
    """SIGKILL this process if :data:`ENV_VAR` names ``point`` (at ``frames``, when it gives a frame count)."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    name, _, at = spec.partition("@")
    if name == point and (not at or (frames is not None and int(at) == frames)):
        os.kill(os.getpid(), signal.SIGKILL)
