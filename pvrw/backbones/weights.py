"""Finding, reading and strictly loading backbone weight files, offline first.

Resolution order for ``weights=None`` (nothing is downloaded here; see :func:`download_weights`):

1. an explicit path (file or folder) given by the caller;
2. ``$PVRW_WEIGHTS_DIR``: ``<dir>/<file name>``, ``<dir>/<backbone name>/<file name>``, ``<dir>/<backbone name>.*``
   and transformers folders ``<dir>/<backbone name>/`` (``config.json`` + weights);
3. the Hugging Face hub cache (``huggingface_hub.try_to_load_from_cache``; honours ``HF_HUB_CACHE`` / ``HF_HOME``);
4. the torch hub cache (``torch.hub.get_dir()/checkpoints``; honours ``TORCH_HOME``).

Files are read with ``weights_only=True`` (``.pth``/``.bin``) or safetensors, their format is detected from the keys
(:func:`detect_format`), and :func:`check_state_dict` compares keys and shapes with the model *before* anything is
copied, so a wrong file is refused and a model is never half-loaded. timm's ``load_pretrained`` silently switches to
``strict=False`` when ``num_classes`` differs from the pretrained config, which is why nothing here goes through it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch

WEIGHTS_DIR_ENV = "PVRW_WEIGHTS_DIR"

# transformers' folder layout: config.json next to one of these
TRANSFORMERS_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsNotFoundError(FileNotFoundError):
    """No weight file for a backbone was found in any of the places looked at (offline)."""


class WeightsFormatError(ValueError):
    """A weight file exists but does not hold the weights of the requested backbone (wrong model or format)."""


@dataclasses.dataclass(frozen=True)
class HFFile:
    """A file on the Hugging Face hub.

    :param repo_id: repository id, e.g. ``"timm/vit_base_patch14_dinov2.lvd142m"``.
    :param filename: file in the repository; for a transformers folder the weights file (``config.json`` is fetched
        with it).
    :param transformers_folder: the repo is a transformers model folder (needs ``config.json`` as well).
    """

    repo_id: str
    filename: str = "model.safetensors"
    transformers_folder: bool = False


@dataclasses.dataclass(frozen=True)
class WeightSources:
    """Where a backbone's weights can come from, and what they are.

    :param filenames: upstream file names looked for in ``$PVRW_WEIGHTS_DIR`` and the torch hub cache.
    :param hf_files: files on the Hugging Face hub (looked up in the local HF cache; downloaded by ``pvrw download``).
    :param url: the original download URL (``pvrw download`` puts it in the torch hub cache).
    :param size: human-readable size of the upstream file.
    :param licence: licence of the weights.
    """

    filenames: tuple[str, ...] = ()
    hf_files: tuple[HFFile, ...] = ()
    url: str | None = None
    size: str = "unknown size"
    licence: str = "unknown licence"


def weights_dir() -> Path | None:
    """The folder named by ``$PVRW_WEIGHTS_DIR``, or None when unset."""
    value = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else None


def hf_hub_cache_dir() -> str:
    """The Hugging Face hub cache, read from ``HF_HUB_CACHE`` / ``HF_HOME`` at call time (not at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return constants.HF_HUB_CACHE


def torch_hub_checkpoints_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``: where torchvision and ``torch.hub`` keep downloaded files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def is_transformers_folder(path: Path) -> bool:
    """True if ``path`` is a folder holding ``config.json`` and a transformers weight file."""
    return path.is_dir() and (path / "config.json").is_file() and any(
        (path / f).is_file() for f in TRANSFORMERS_WEIGHT_FILES)


def _candidates_in_dir(folder: Path, name: str, sources: WeightSources, generic_at_top: bool) -> list[Path]:
    """Every path under ``folder`` that could hold the weights of backbone ``name``, most specific first.

    Generic hub file names (``model.safetensors``...) are only looked for in ``folder/<name>/``, unless
    ``generic_at_top`` (a folder given for this one backbone).
    """
    generic = [f.filename for f in sources.hf_files if not f.transformers_folder]
    cands = [folder / name]
    cands += [folder / name / f for f in (*sources.filenames, *generic)]
    cands += [folder / f for f in (*sources.filenames, *(generic if generic_at_top else ()))]
    cands += [folder / f"{name}{ext}" for ext in (".safetensors", ".pth", ".pt", ".bin")]
    return list(dict.fromkeys(cands))


def _usable(path: Path) -> bool:
    return path.is_file() or is_transformers_folder(path)


def find_weights(name: str, sources: WeightSources, explicit: str | os.PathLike | None = None) -> Path:
    """Resolve a backbone's weights offline, or raise :class:`WeightsNotFoundError` naming every place looked at.

    :param name: registry name of the backbone (used for ``$PVRW_WEIGHTS_DIR/<name>/``).
    :param sources: the backbone's :class:`WeightSources`.
    :param explicit: a file or folder given by the user; when set, nothing else is searched.
    :return: a weight file, or a transformers folder.
    """
    looked: list[str] = []
    if explicit is not None:
        if not isinstance(explicit, (str, os.PathLike)):
            raise TypeError(f"weights={explicit!r}: pass None (offline lookup), 'random' (smoke tests only) or the "
                            "path of a weight file or folder.")
        path = Path(explicit).expanduser()
        if str(explicit).strip().lower() == "random" and not path.exists():
            raise ValueError(f"weights={explicit!r} is not a path; for random weights (smoke tests only) write "
                             "weights='random'.")
        if path.is_file() or is_transformers_folder(path):
            return path
        if path.is_dir():
            for cand in _candidates_in_dir(path, name, sources, generic_at_top=True):
                if _usable(cand):
                    return cand
                looked.append(str(cand))
        else:
            looked.append(str(path))
        raise WeightsNotFoundError(missing_weights_message(name, sources, looked, explicit=True))

    folder = weights_dir()
    if folder is None:
        looked.append(f"${WEIGHTS_DIR_ENV} (not set)")
    else:
        for cand in _candidates_in_dir(folder, name, sources, generic_at_top=False):
            if _usable(cand):
                return cand
            looked.append(str(cand))

    if sources.hf_files:
        from huggingface_hub import try_to_load_from_cache

        cache_dir = hf_hub_cache_dir()
        for hf in sources.hf_files:
            found = try_to_load_from_cache(hf.repo_id, hf.filename, cache_dir=cache_dir)
            if isinstance(found, str):
                found_path = Path(found)
                if not hf.transformers_folder:
                    return found_path
                if is_transformers_folder(found_path.parent):
                    return found_path.parent
            looked.append(f"HF cache {cache_dir}: {hf.repo_id}/{hf.filename}")

    hub = torch_hub_checkpoints_dir()
    for filename in sources.filenames:
        cand = hub / filename
        if cand.is_file():
            return cand
        looked.append(f"torch hub cache: {cand}")
    raise WeightsNotFoundError(missing_weights_message(name, sources, looked))


def missing_weights_message(name: str, sources: WeightSources, looked: Iterable[str], explicit: bool = False) -> str:
    """The text of :class:`WeightsNotFoundError`: where we looked, what the file is, how to get it."""
    lines = [f"No weights found for backbone {name!r}" + (" at the given path." if explicit else " (offline search).")]
    lines.append("Looked at:")
    lines += [f"  - {p}" for p in looked]
    lines.append("Upstream weights:")
    lines += [f"  - Hugging Face: {hf.repo_id} ({hf.filename}{' + config.json' if hf.transformers_folder else ''})"
              for hf in sources.hf_files]
    if sources.url:
        lines.append(f"  - URL: {sources.url}")
    lines.append(f"  - size: {sources.size}; licence: {sources.licence}")
    lines.append("How to get them:")
    lines.append(f"  - on a machine with network: `pvrw download {name}` (fills the HF / torch hub cache), then copy "
                 "the cache here;")
    if sources.filenames:
        files = ", ".join(sources.filenames)
        lines.append(f"  - or copy {files} into ${WEIGHTS_DIR_ENV} (or ${WEIGHTS_DIR_ENV}/{name}/);")
    hub_names = sorted({hf.filename + (" + config.json" if hf.transformers_folder else "") for hf in sources.hf_files})
    if hub_names:
        lines.append(f"  - or copy a hub download ({' or '.join(hub_names)}) into ${WEIGHTS_DIR_ENV}/{name}/;")
    lines.append("  - or pass weights=PATH (a file or folder in any of these formats);")
    lines.append('  - weights="random" builds the architecture with random weights, for smoke tests only.')
    return "\n".join(lines)


def _damaged(path: Path, reader: str, err: Exception, name: str | None) -> WeightsFormatError:
    size = path.stat().st_size if path.exists() else 0
    again = f"download it again (`pvrw download {name}`)" if name else "download it again"
    return WeightsFormatError(
        f"Could not read weight file {path} ({size:,} bytes): it is truncated, damaged or not a weight file; "
        f"{again}, or pass the right file. {reader} said: {(str(err) or type(err).__name__).splitlines()[0]}")


def read_state_dict(path: str | os.PathLike, name: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a weight file (safetensors / ``.pth`` / ``.bin``) or a transformers folder, on CPU, without pickled code.

    :param name: the backbone the file is for, named in the error for a damaged file (how to download it again).
    :return: ``(state_dict, meta)``; ``meta`` holds ``{"config": ...}`` for transformers folders and
        ``{"wrapper": key}`` when the tensors were found under a top-level key such as ``"model"``.
    :raises WeightsFormatError: a truncated or damaged file, or one that is not a flat dict of tensors.
    """
    path = Path(path)
    meta: dict = {}
    if path.is_dir():
        if not is_transformers_folder(path):
            raise WeightsFormatError(f"{path} is a folder but not a transformers model folder (config.json + "
                                     f"{' or '.join(TRANSFORMERS_WEIGHT_FILES)}).")
        meta["config"] = json.loads((path / "config.json").read_text())
        path = next(path / f for f in TRANSFORMERS_WEIGHT_FILES if (path / f).is_file())
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 - SafetensorError (header) or OSError, e.g. a cut download
            raise _damaged(path, "safetensors", err, name) from err
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - turn any unpickling failure into one clear message
            raise _damaged(path, "torch.load(weights_only=True)", err, name) from err
    for key in ("model", "state_dict", "model_ema", "state_dict_ema"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            meta["wrapper"] = key
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFormatError(f"{path} does not hold a flat dict of tensors (a state dict).")
    return dict(state), meta


def detect_format(state: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> str:
    """Name the upstream format of a state dict from its keys.

    :return: one of ``"transformers_dinov2"``, ``"transformers_dinov2_reg"``, ``"meta_dinov2"``, ``"mae"``,
        ``"timm_vit"``, ``"torchvision_resnet"``, ``"unknown"``.
    """
    keys = set(state)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        model_type = (meta or {}).get("config", {}).get("model_type", "")
        registers = any(k.endswith("embeddings.register_tokens") for k in keys) or "registers" in model_type
        return "transformers_dinov2_reg" if registers else "transformers_dinov2"
    layerscale = any(k.endswith(".ls1.gamma") for k in keys)  # DINOv2 blocks have LayerScale, MAE's do not
    if has("decoder_embed.") or has("decoder_blocks.") or (meta or {}).get("wrapper") == "model" and has("blocks."):
        return "mae"
    if "mask_token" in keys and has("blocks."):
        return "meta_dinov2" if layerscale or "register_tokens" in keys else "mae"
    if "patch_embed.proj.weight" in keys:
        return "timm_vit"
    if "conv1.weight" in keys and has("layer1.0.conv1."):
        return "torchvision_resnet"
    return "unknown"


def _sample_keys(keys: Iterable[str], n: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse a state dict that does not match ``model`` exactly (keys and shapes), before anything is copied.

    :param what: names the file and backbone in the error message.
    :raises WeightsFormatError: on any missing key, unexpected key or shape mismatch.
    """
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{what} does not match the model; refusing to load it (nothing was loaded)."]
        if missing:
            parts.append(f"missing keys: {_sample_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_sample_keys(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {'; '.join(mismatched[:4])}" + (" ..." if len(mismatched) > 4 else ""))
        parts.append("Is this the weight file of the right backbone?")
        raise WeightsFormatError("\n".join(parts))


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """:func:`check_state_dict`, then ``load_state_dict(strict=True)``."""
    check_state_dict(model, state, what)
    model.load_state_dict(state, strict=True)


_FINGERPRINTS: dict[tuple, str] = {}


def file_fingerprint(path: str | os.PathLike, length: int = 16) -> str:
    """``"sha256:<prefix>"`` of a weight file, or of the weight files of a transformers folder (memoised by mtime)."""
    path = Path(path)
    files = [path / f for f in TRANSFORMERS_WEIGHT_FILES if (path / f).is_file()][:1] if path.is_dir() else [path]
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for f in files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
        _FINGERPRINTS[key] = "sha256:" + digest.hexdigest()[:length]
    return _FINGERPRINTS[key]


def module_fingerprint(module: torch.nn.Module, length: int = 16) -> str:
    """``"module-sha256:<prefix>"`` of a module's state dict (for user modules that carry their own weights)."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                      if value.numel() else b"")
    return "module-sha256:" + digest.hexdigest()[:length]


def download_weights(name: str, sources: WeightSources) -> Path:
    """Download a backbone's weights into the HF hub cache (or, for URL-only sources, the torch hub cache).

    Needs network access; with ``HF_HUB_OFFLINE=1`` or no connection it raises with the reason.
    """
    errors: list[str] = []
    for hf in sources.hf_files:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(hf.repo_id, hf.filename, cache_dir=hf_hub_cache_dir()))
            if hf.transformers_folder:
                hf_hub_download(hf.repo_id, "config.json", cache_dir=hf_hub_cache_dir())
                return path.parent
            return path
        except Exception as err:  # noqa: BLE001 - try the next source, report all failures together
            errors.append(f"{hf.repo_id}/{hf.filename}: {type(err).__name__}: {err}")
    if sources.url and sources.filenames:
        target = torch_hub_checkpoints_dir() / sources.filenames[0]
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(sources.url, str(target), progress=True)
            return target
        except Exception as err:  # noqa: BLE001
            errors.append(f"{sources.url}: {type(err).__name__}: {err}")
    raise WeightsNotFoundError(f"Could not download weights for {name!r} (network needed):\n  "
                               + "\n  ".join(errors or ["no download source known"]))
