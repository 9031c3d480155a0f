"""``surgery push``: upload a checkpoint (and optionally its ONNX export) to the Hub with a re-rendered card.

Through ``huggingface_hub`` only: ``create_repo(exist_ok=True)``, ``create_branch`` for a revision other than
``main``, and ``create_commit`` (one commit for the checkpoint, one before it for ``onnx/``) with one
``CommitOperationAdd`` per file ``upload_folder``'s filter selects. The files are not handed over by name: each
is checked and opened by :mod:`surgery.publish.files` before any network call (nothing outside the folder's real
directory, no FIFO or device) and the upload reads that open file, so what is sent is what was checked.
README.md and surgery.json are sent as the bytes rendered here (the same bytes are written locally).
:func:`make_api` is the one place an ``HfApi`` is built (tests replace it).

**Reruns.** ``create_commit`` hashes every file and asks the Hub (``preupload``) which paths already hold the
same content: those are dropped from the commit, and a commit with nothing left is skipped. Weights go to LFS
storage before the commit; a storage batch request for content the Hub already holds gets no upload action,
so an interrupted push resent runs only what is missing and then commits. The card and ``surgery.json`` are
the same bytes on a rerun: the ``push`` stage recorded in ``surgery.json`` is reused when the last stage is an
identical push, and the local files are restored when an upload fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from surgery import __version__
from surgery.apply.card import last_stage
from surgery.apply.provenance import PROVENANCE_FILE, Provenance
from surgery.errors import SurgeryError
from surgery.fileio import atomic_write_text
from surgery.io.hub import redact_url_secrets
from surgery.publish.checkpoint import Checkpoint, checkpoint_dir, checkpoint_files, read_checkpoint, read_onnx_export
from surgery.publish.config import PushConfig
from surgery.publish.files import open_inside, upload_source
from surgery.publish.render import RenderedCard, render_card

DEFAULT_REVISION = "main"
TOKENS_URL = "https://huggingface.co/settings/tokens"


@dataclass
class PushPlan:
    """Everything a push would do, decided without the network: repo, files with sizes, the card."""

    config: PushConfig
    checkpoint: Checkpoint
    card: RenderedCard
    record: Provenance  # with the push stage: the surgery.json that is uploaded
    files: list[tuple[str, int]]  # (path in the repo, size in bytes), in upload order
    left_out: list[str]  # files in the checkpoint directory that are not uploaded
    onnx_dir: Path | None = None
    onnx_names: list[str] = field(default_factory=list)  # files of onnx_dir, uploaded under onnx/
    names: list[str] = field(default_factory=list)  # files of the checkpoint directory uploaded
    generated: dict[str, bytes] = field(default_factory=dict)  # README.md and surgery.json as uploaded
    result: dict[str, Any] = field(default_factory=dict)  # after a real push: commit_url, ...

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def make_api(token: str, endpoint: str | None = None):
    """The ``HfApi`` a push talks through (``HF_ENDPOINT`` respected at call time, not only at import)."""
    from huggingface_hub import HfApi

    return HfApi(
        endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None,
        token=token,
        library_name="surgery",
        library_version=__version__,
    )


def endpoint() -> str:
    """The Hub endpoint, fit for a message: user names, passwords and query values are redacted."""
    from huggingface_hub import constants

    return redact_url_secrets(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)


def _push_details(config: PushConfig, card: RenderedCard, files: list[str], onnx: bool) -> dict[str, Any]:
    measured = card.measurements

    def named(run) -> dict[str, str] | None:
        return None if run is None else {"file": run.file, "sha256": run.sha256}

    return {
        "repo_id": config.repo_id,
        "revision": config.revision,
        "files": files,
        "eval": [named(run) for run in measured.eval],
        "baseline": named(measured.baseline),
        "bench": named(measured.bench),
        "onnx": onnx,
    }


def plan_push(config: PushConfig) -> PushPlan:
    """Check everything and render what would be uploaded; no network, no file written.

    Every file selected for upload is checked (:mod:`surgery.publish.files`) before anything in the folders is
    read, so a symlink out of them, a FIFO or a device stops the push here, dry run or not.
    """
    root = checkpoint_dir(config.checkpoint)
    sizes = checkpoint_files(root)
    checkpoint = read_checkpoint(root)
    if not any(name.endswith(".safetensors") for name in sizes):
        raise SurgeryError(f"{root}: no *.safetensors weights to upload")
    onnx = read_onnx_export(config.include_onnx, checkpoint) if config.include_onnx is not None else None
    card = render_card(checkpoint, config, name=config.repo_id, onnx=onnx)
    names = sorted({*sizes, "README.md", PROVENANCE_FILE})  # both written before upload
    onnx_names = onnx.files if onnx else []
    record = card.record.model_copy(deep=True)
    details = _push_details(config, card, [f"onnx/{name}" for name in onnx_names] + names, onnx is not None)
    previous = last_stage(record, "push")
    if not (record.history and record.history[-1] is previous and previous.details == details):
        record.add_stage("push", **details)
    generated = {"README.md": card.text.encode(), PROVENANCE_FILE: record.to_json().encode()}
    files = [(f"onnx/{name}", onnx.sizes[name]) for name in onnx_names] if onnx else []
    files += [(name, len(generated[name]) if name in generated else sizes[name]) for name in names]
    left_out = [path.name for path in sorted(root.iterdir()) if path.name not in names]
    onnx_dir = onnx.root if onnx else None
    return PushPlan(config, checkpoint, card, record, files, left_out, onnx_dir, onnx_names, names, generated)


def _token(variable: str) -> str:
    token = os.environ.get(variable, "").strip()
    if not token:
        raise SurgeryError(
            f"no Hub token: set {variable} to a token with write access ({TOKENS_URL}), or name another "
            "variable with --token-env"
        )
    return token


def _require_hub() -> None:
    from surgery.io.hub import is_offline, prepare_hub

    chosen = is_offline()
    if prepare_hub():
        why = "HF_HUB_OFFLINE is set" if chosen else "no connection"
        raise SurgeryError(f"cannot reach the Hub at {endpoint()} ({why}); nothing was uploaded")


def _hub_error(exc: BaseException, config: PushConfig) -> SurgeryError | None:
    """The one-line error for what huggingface_hub raised, or None for a bug (re-raised as is)."""
    import requests
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    from surgery.io.model_ref import first_line

    while isinstance(exc, RuntimeError) and exc.__cause__ is not None:  # "Error while uploading 'x' to the Hub."
        exc = exc.__cause__
    repo, variable = config.repo_id, config.token_env
    if isinstance(exc, RepositoryNotFoundError):
        return SurgeryError(f"repository {repo} not found, or the token in {variable} cannot see it")
    if isinstance(exc, RevisionNotFoundError):
        return SurgeryError(f"revision {config.revision!r} not found in {repo}")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            return SurgeryError(f"not authorized: the Hub rejected the token in {variable} (401); see {TOKENS_URL}")
        if status == 403:
            return SurgeryError(
                f"not authorized to write to {repo} (403): the token in {variable} needs write access to that namespace"
            )
        return SurgeryError(f"the Hub refused the push to {repo}: {first_line(exc)}")
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, OSError)):
        return SurgeryError(f"cannot reach the Hub at {endpoint()} ({type(exc).__name__}: {first_line(exc)})")
    if isinstance(exc, ValueError) and "metadata" in str(exc):
        return SurgeryError(f"the Hub rejected the card's metadata: {' '.join(str(exc).split())}")
    return None


@contextmanager
def _hub_errors(config: PushConfig) -> Iterator[None]:
    try:
        yield
    except SurgeryError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to one line, or re-raised untouched
        error = _hub_error(exc, config)
        if error is None:
            raise
        raise SurgeryError(redact_url_secrets(str(error))) from exc


def _check_is_model(api, repo_id: str) -> None:
    """After ``create_repo(exist_ok=True)``: the repo must be a model; name the type it has otherwise."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        api.repo_info(repo_id, repo_type="model")
    except RepositoryNotFoundError:
        for other in ("dataset", "space"):
            if api.repo_exists(repo_id, repo_type=other):
                raise SurgeryError(
                    f"{repo_id} exists on the Hub as a {other} repository, not a model: choose another name"
                ) from None
        raise


def _open_all(stack: ExitStack, plan: PushPlan) -> dict[str, str | bytes | BinaryIO]:
    """What each repo path is read from: every file of both folders opened and checked now, before any network
    call (a file swapped since the plan stops the push before anything is sent), README.md and surgery.json as
    the bytes rendered."""
    sources: dict[str, str | bytes | BinaryIO] = {}
    if plan.onnx_dir is not None:
        for name in plan.onnx_names:
            handle = stack.enter_context(open_inside(plan.onnx_dir, name, f"--include-onnx {plan.onnx_dir}"))
            sources[f"onnx/{name}"] = upload_source(handle)
    for name in plan.names:
        if name in plan.generated:
            sources[name] = plan.generated[name]
        else:
            handle = stack.enter_context(open_inside(plan.checkpoint.path, name, f"checkpoint {plan.checkpoint.path}"))
            sources[name] = upload_source(handle)
    return sources


def _commit(api, config: PushConfig, sources: dict[str, str | bytes | BinaryIO], paths: list[str], message: str):
    """One commit of ``paths`` (repo paths), each read from its checked source."""
    from huggingface_hub import CommitOperationAdd

    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=sources[path]) for path in paths]
    if "README.md" in paths and hasattr(api, "_validate_yaml"):  # as upload_folder does, before hashing
        api._validate_yaml(content=sources["README.md"].decode(), repo_type="model")
    return api.create_commit(
        repo_id=config.repo_id,
        repo_type="model",
        operations=operations,
        commit_message=message,
        revision=config.revision,
    )


@contextmanager
def _local_card(plan: PushPlan) -> Iterator[None]:
    """Write README.md and surgery.json as uploaded; put the previous ones back if the push fails."""
    paths = {
        plan.checkpoint.path / "README.md": plan.card.text,
        plan.checkpoint.path / PROVENANCE_FILE: plan.record.to_json(),
    }
    before = {path: path.read_text(encoding="utf-8") if path.is_file() else None for path in paths}
    for path, text in paths.items():
        atomic_write_text(path, text)
    try:
        yield
    except BaseException:
        for path, text in before.items():
            if text is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write_text(path, text)
        raise


def push_checkpoint(config: PushConfig, *, log: Callable[[str], None] = print) -> PushPlan:
    """Plan the push; unless ``config.dry_run``, upload it. Returns the plan (``result`` filled after a push)."""
    plan = plan_push(config)
    if config.dry_run:
        return plan
    token = _token(config.token_env)
    _require_hub()
    api = make_api(token)
    message = config.commit_message or (
        f"Upload {config.repo_id}: {plan.checkpoint.record.plan.canonical} (surgery {__version__})"
    )
    with _hub_errors(config), ExitStack() as stack:
        sources = _open_all(stack, plan)
        repo_url = api.create_repo(config.repo_id, repo_type="model", private=config.private, exist_ok=True)
        _check_is_model(api, config.repo_id)
        if config.revision != DEFAULT_REVISION:
            api.create_branch(config.repo_id, branch=config.revision, exist_ok=True)
        with _local_card(plan):
            if plan.onnx_dir is not None:
                log(f"uploading {plan.onnx_dir} -> {config.repo_id}/onnx")
                onnx_paths = [f"onnx/{name}" for name in plan.onnx_names]
                _commit(api, config, sources, onnx_paths, f"{message} (ONNX export)")
            log(f"uploading {plan.checkpoint.path} -> {config.repo_id}")
            commit = _commit(api, config, sources, plan.names, message)
    commit_url = getattr(commit, "commit_url", None)
    plan.result = {
        "repo_url": redact_url_secrets(str(repo_url)),
        "commit_url": None if commit_url is None else redact_url_secrets(str(commit_url)),
    }
    return plan
