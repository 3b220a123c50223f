"""Frames inside observations, and embedding frame stacks so that each distinct frame reaches the backbone once.

* :class:`FrameLayout` / :func:`rgb_layout`: where the RGB frames sit in an observation (HWC, CHW, stacked);
* :class:`StackEmbedder`: per env slot, reuses the features of frames seen in the previous observation (the stack
  shift is detected; identical frames such as a reset stack's padding are embedded once) and embeds the new frames
  of all slots in one backbone call;
* :func:`random_shift`: DrQ's random shift of one observation's frames.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FrameLayout:
    """How RGB frames sit in an observation array, and how to take them out as ``(k,3,H,W)`` uint8."""

    def __init__(self, shape: Sequence[int], channels_first: bool | None = None) -> None:
        self.shape = tuple(shape)
        s = self.shape
        if len(s) == 4 and 3 in (s[1], s[3]):
            self.kind = "kchw" if s[1] == 3 else "khwc"
        elif len(s) == 3:
            if channels_first is None:
                channels_first = s[0] % 3 == 0 and not (s[2] % 3 == 0 and s[2] < s[0])
            if channels_first and s[0] % 3 == 0:
                self.kind = "chw"
            elif not channels_first and s[2] % 3 == 0:
                self.kind = "hwc"
            else:
                raise ValueError(f"observation shape {s} has no RGB channel axis (a multiple of 3).")
        else:
            raise ValueError(f"observation shape {s} is not an RGB frame or frame stack: expected (H,W,3), (3,H,W), "
                             "(3k,H,W), (H,W,3k), (k,3,H,W) or (k,H,W,3).")
        if self.kind == "chw":
            self.k, self.height, self.width = s[0] // 3, s[1], s[2]
        elif self.kind == "hwc":
            self.k, self.height, self.width = s[2] // 3, s[0], s[1]
        elif self.kind == "kchw":
            self.k, self.height, self.width = s[0], s[2], s[3]
        else:
            self.k, self.height, self.width = s[0], s[1], s[2]

    def frames(self, obs: np.ndarray) -> np.ndarray:
        """One observation -> ``(k,3,H,W)`` uint8, C-contiguous."""
        obs = np.asarray(obs)
        if obs.shape != self.shape or obs.dtype != np.uint8:
            raise ValueError(f"expected a uint8 observation of shape {self.shape}, got {obs.dtype} {obs.shape}; "
                             "the env does not produce the frames its observation_space declares.")
        k, h, w = self.k, self.height, self.width
        if self.kind == "chw":
            out = obs.reshape(k, 3, h, w)
        elif self.kind == "hwc":
            out = obs.reshape(h, w, k, 3).transpose(2, 3, 0, 1)
        elif self.kind == "kchw":
            out = obs
        else:
            out = obs.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(out)


_RENDER_FIX = ("Use source='render' with an env made with render_mode='rgb_array', or give the env a pixel observation "
               "(e.g. make_env).")
_VECTOR_FIX = ("The vectorised wrappers read frames from observations only: give the sub-envs pixel observations (e.g. "
               "make_env / make_vec_env), or wrap each sub-env in PVRObservation(env, ..., source='render') before "
               "vectorising.")


def rgb_layout(space: gym.Space, channels_first: bool | None = None, vectorised: bool = False) -> FrameLayout:
    """The :class:`FrameLayout` of an observation space, or a ValueError saying why it holds no RGB frames.

    :param vectorised: the space of a vectorised wrapper's sub-env (no ``source='render'`` there: the fix differs).
    """
    fix = _VECTOR_FIX if vectorised else _RENDER_FIX
    if not isinstance(space, spaces.Box) or space.dtype != np.uint8:
        raise ValueError(f"observation space {space} holds no uint8 RGB frames. {fix}")
    try:
        return FrameLayout(space.shape, channels_first)
    except ValueError as err:
        raise ValueError(f"observation space {space}: {err} {fix}") from err


def _digest(frame: np.ndarray) -> bytes:
    return hashlib.blake2b(memoryview(frame).cast("B"), digest_size=16).digest()


class _SlotState:
    """What one env slot showed last: its frames, and for each frame either its features or a pending index."""

    __slots__ = ("digests", "frames", "sources")

    def __init__(self, frames: np.ndarray, sources: list) -> None:
        self.frames = frames.copy()  # an env may reuse its observation buffer: keep what was actually seen
        self.sources = sources  # each: np.ndarray features, or int index into the pending batch
        self.digests: list[bytes] | None = None

    def digest_map(self) -> dict[bytes, Any]:
        if self.digests is None:
            self.digests = [_digest(f) for f in self.frames]
        return dict(zip(self.digests, self.sources))


class StackEmbedder:
    """Embeds frame stacks for ``n_slots`` envs, each distinct frame once, new frames of all slots in one call.

    :param backbone: anything with ``embed(frames uint8 (N,3,H,W)) -> (N,*output_shape)`` and ``output_shape``.
    :param reuse: reuse features of frames seen in the slot's previous observation (False when augmenting).
    """

    def __init__(self, backbone: Any, n_slots: int, reuse: bool = True, batch_size: int = 64) -> None:
        self.backbone = backbone
        self.reuse = reuse
        self.batch_size = batch_size
        self.state: list[_SlotState | None] = [None] * n_slots
        self.backbone_calls = 0
        self.frames_embedded = 0

    def __call__(self, items: Sequence[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        """``[(slot, frames (k,3,H,W)), ...]`` in time order -> ``[features (k,*output_shape), ...]``."""
        pending: list[np.ndarray] = []
        pending_ids: dict[bytes, int] = {}

        def new(frame: np.ndarray, digest: bytes | None = None) -> int:
            if digest is None:
                pending.append(frame)
                return len(pending) - 1
            if digest not in pending_ids:
                pending_ids[digest] = len(pending)
                pending.append(frame)
            return pending_ids[digest]

        planned: list[_SlotState] = []
        for slot, frames in items:
            prev = self.state[slot] if self.reuse else None
            k = len(frames)
            if prev is not None and k > 1 and prev.frames.shape == frames.shape and np.array_equal(
                    frames[:-1], prev.frames[1:]):
                last = prev.sources[-1] if np.array_equal(frames[-1], prev.frames[-1]) else new(frames[-1])
                sources = [*prev.sources[1:], last]
            else:
                known = prev.digest_map() if prev is not None else {}
                digests = [_digest(f) for f in frames]
                sources = [known[d] if d in known else new(f, d) for f, d in zip(frames, digests)]
            state = _SlotState(frames, sources)
            self.state[slot] = state
            planned.append(state)

        features = None
        if pending:
            features = self.backbone.embed(np.stack(pending), batch_size=self.batch_size)
            self.backbone_calls += 1
            self.frames_embedded += len(pending)
        out = []
        for state in planned:
            state.sources = [features[s] if isinstance(s, int) else s for s in state.sources]
            out.append(np.stack(state.sources))
        return out


def random_shift(frames: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """DrQ random shift of a ``(k,3,H,W)`` stack: replicate-pad by ``pad``, crop back at one random offset."""
    if pad <= 0:
        return frames
    dy, dx = rng.integers(0, 2 * pad + 1, size=2)
    padded = np.pad(frames, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
    return np.ascontiguousarray(padded[:, :, dy:dy + frames.shape[2], dx:dx + frames.shape[3]])
