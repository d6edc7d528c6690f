"""A clear, fast failure for checkpoint names that are neither a local folder nor a reachable Hub repository.

`AutoModel.from_pretrained("svitt-ego")` in a directory without a `svitt-ego/` folder takes the name for a Hub repo
id. With no network, huggingface_hub then retries the download for about 25 s before transformers raises an error
that says nothing about where an SViTT checkpoint comes from.

`install_checkpoint_name_hint()` wraps the two functions through which `from_pretrained` (configs, models,
processors, tokenizers, remote code) first reaches the Hub for a name: `transformers.utils.hub.cached_files` (every
file lookup) and `list_repo_templates` (the chat-template listing processors do before their first file lookup).
The wrappers only act on names that look like SViTT checkpoints (the repository name contains "svitt", e.g. `svitt-ego` or
`user/svitt-msrvtt`): loading any other model in the same process is left exactly as transformers does it. They
change nothing for local folders and for names whose revision transformers already resolved (the Hub answered, or
the cache knows the repository). For another SViTT name they ask the Hub once, without retries, whether it can be
reached. When it cannot (or `HF_HUB_OFFLINE` / `local_files_only` cut it off) and the cache holds nothing for the
name, or when the Hub answers that no such repository exists, the load fails at once with an `OSError` that says how
to get an SViTT checkpoint. A cached repository is still served from the cache, without retries.

It is an explicit opt-in: importing `modeling_svitt` changes nothing in transformers. The scripts of `training/` (the
places where this project loads checkpoints by name) and `python -m svitt_tools.visualize` install it; a user who
wants the same message from their own `from_pretrained` calls installs it once at the start of their program.
"""

from __future__ import annotations

import functools
import os

import huggingface_hub
import transformers.utils.hub as transformers_hub
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

_RESOLVED_REVISION = getattr(huggingface_hub, "ResolvedRevision", ())
_RECIPES = ("svitt", "svitt-ego")


def how_to_get_a_checkpoint(name: str, reason: str) -> str:
    """The message for a name that is neither a folder nor a Hub repository that can be used now."""
    folder = name if name in _RECIPES else "svitt-ego"
    return (
        f"{name!r} is not a local folder, and {reason}.\n"
        "To get an SViTT checkpoint:\n"
        f"  - train one: `accelerate launch training/pretrain.py --recipe {folder} --output-dir {folder}`, then load "
        f"it by the folder's name ({folder!r});\n"
        "  - convert the authors' release: `python -m modeling_svitt.convert_original_svitt --checkpoint ckpt.pth "
        f"--output {folder} --model-card`;\n"
        "  - or give the id of a Hub repository that holds one (`user/name`; add `trust_remote_code=True` where the "
        "svitt package is not installed)."
    )


def _hub_error(repo_id: str, kwargs: dict) -> Exception | None:
    """Ask the Hub about the repository once, without retries: `None` when it answered, else why it could not."""
    try:
        transformers_hub.hf_api().repo_info(
            repo_id, revision=kwargs.get("revision"), repo_type=kwargs.get("repo_type"), token=kwargs.get("token")
        )
    except HfHubHTTPError:
        return None  # the Hub answered (transformers reports "not found" / "no access" in its own words)
    except Exception as error:  # noqa: BLE001 - connection refused, DNS failure, timeout, proxy error, offline mode
        return error
    return None


def _is_cached(repo_id: str, kwargs: dict) -> bool:
    cache_dir = kwargs.get("cache_dir") or huggingface_hub.constants.HF_HUB_CACHE
    return os.path.isdir(
        os.path.join(str(cache_dir), repo_folder_name(repo_id=repo_id, repo_type=kwargs.get("repo_type") or "model"))
    )


def names_an_svitt_checkpoint(name: str) -> bool:
    """Whether the hint applies: the last part of the name (the repository or folder name) mentions SViTT."""
    return "svitt" in name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()


def _check_reachable_or_cached(name: str, kwargs: dict) -> None:
    """Limit the lookup to the cache when the Hub cannot be reached; raise when nothing can serve the name."""
    if (
        not names_an_svitt_checkpoint(name)
        or os.path.isdir(name)
        or isinstance(kwargs.get("revision"), _RESOLVED_REVISION)
    ):
        return
    try:
        validate_repo_id(name)
    except HFValidationError as error:
        raise OSError(how_to_get_a_checkpoint(name, f"it is not a valid Hub repository id either ({error})")) from None
    if huggingface_hub.is_offline_mode():
        reason = "HF_HUB_OFFLINE is set"
    elif kwargs.get("local_files_only"):
        reason = "`local_files_only=True` was passed"
    elif error := _hub_error(name, kwargs):
        reason = f"{huggingface_hub.constants.ENDPOINT} could not be reached ({type(error).__name__}: {error})"
        kwargs["local_files_only"] = True  # serve the cache if it has the repository, instead of retrying
    else:
        return
    if not _is_cached(name, kwargs):
        raise OSError(how_to_get_a_checkpoint(name, f"{reason} and the Hugging Face cache holds nothing for it"))


def _with_checkpoint_hint(cached_files):
    @functools.wraps(cached_files)
    def wrapper(path_or_repo_id, filenames, **kwargs):
        name = str(path_or_repo_id)
        _check_reachable_or_cached(name, kwargs)
        try:
            return cached_files(path_or_repo_id, filenames, **kwargs)
        except OSError as error:
            if isinstance(error.__cause__, RepositoryNotFoundError) and names_an_svitt_checkpoint(name):
                reason = f"it is not a model repository on {huggingface_hub.constants.ENDPOINT} that you can access"
                raise OSError(f"{error}\n\n{how_to_get_a_checkpoint(name, reason)}") from None
            raise

    wrapper._svitt_checkpoint_hint = True
    return wrapper


def _with_cache_fallback(list_repo_templates):
    @functools.wraps(list_repo_templates)
    def wrapper(repo_id, **kwargs):
        _check_reachable_or_cached(str(repo_id), kwargs)
        return list_repo_templates(repo_id, **kwargs)

    return wrapper


def install_checkpoint_name_hint() -> None:
    """Install the wrappers, once per process. Opt-in: this replaces two private functions of transformers for the
    whole process, which a script may decide for itself and a library import must not."""
    import transformers.processing_utils

    if getattr(transformers_hub.cached_files, "_svitt_checkpoint_hint", False):
        return
    transformers_hub.cached_files = _with_checkpoint_hint(transformers_hub.cached_files)
    # imported by name there, so wrapped where processors look it up
    transformers.processing_utils.list_repo_templates = _with_cache_fallback(
        transformers.processing_utils.list_repo_templates
    )


__all__ = ["how_to_get_a_checkpoint", "install_checkpoint_name_hint", "names_an_svitt_checkpoint"]
