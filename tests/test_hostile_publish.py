"""Hostile inputs to `surgery push` (issue 18, items 1 and 9).

* push reads nothing outside the checkpoint's (or the ONNX export's) real directory: symlinks out of it at any
  depth, FIFOs, devices and sockets are refused with one line before anything is uploaded, and what is uploaded
  is the file that was checked (the real huggingface_hub client against the local Hub stand-in of
  test_publish.py);
* an ONNX export of another model is refused, and what its export.json claims is validated;
* URLs in messages lose their user names, passwords, query values and tokens.

Non-finite numbers, text on the card and `surgery plot` paths: test_hostile_publish_cards.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
from pathlib import Path

import pytest
import requests
import test_publish as publish
from huggingface_hub.errors import HfHubHTTPError
from test_publish import REPO, _http_error, error_line, invoke, listed_files

import surgery.io.hub as hub
import surgery.publish.push as push_module
from surgery.io.hub import redact_url_secrets

# test_publish's fixtures, used here by name: the checkpoints made once, a fresh copy, the fake HfApi, the local Hub
made, skip, fake, local_hub = publish.made, publish.skip, publish.fake, publish.local_hub
SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- planted secret -----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture
def no_hang():
    """A test that would hang (a FIFO opened for reading) fails after 30 s instead."""

    def timeout(*_):
        raise TimeoutError("hung")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def secret(tmp_path) -> Path:
    """A private file outside every checkpoint (stands for ~/.ssh/id_rsa, /etc/shadow...)."""
    path = tmp_path / "home" / ".ssh" / "id_rsa"
    path.parent.mkdir(parents=True)
    path.write_bytes(SECRET)
    return path


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("mknod not permitted here")


def _socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


# (what is planted in the checkpoint, the name the error line must give)
CHECKPOINT_PLANTS = {
    "weights symlink": (lambda c, s: (c / "extra.safetensors").symlink_to(s), "extra.safetensors"),
    "tokenizer file symlink": (lambda c, s: (c / "added_tokens.json").symlink_to(s), "added_tokens.json"),
    "vocab symlink": (lambda c, s: (c / "vocab.txt").symlink_to(s), "vocab.txt"),
    "relative symlink": (lambda c, s: (c / "merges.txt").symlink_to(os.path.relpath(s, c)), "merges.txt"),
    "config.json replaced": (lambda c, s: _replace_with_link(c / "config.json", s, "{}"), "config.json"),
    "surgery.json replaced": (lambda c, s: _replace_with_link(c / "surgery.json", s), "surgery.json"),
    "README.md replaced": (lambda c, s: _replace_with_link(c / "README.md", s), "README.md"),
    "chain of symlinks": (lambda c, s: _chain(c, s), "tokenizer.json"),
    "broken symlink out": (lambda c, s: (c / "vocab.json").symlink_to(s.parent / "gone"), "vocab.json"),
    "directory symlink": (lambda c, s: (c / "dir.safetensors").symlink_to(s.parent), "dir.safetensors"),
    "FIFO": (lambda c, s: _fifo(c / "extra.safetensors"), "extra.safetensors"),
    "FIFO tokenizer": (lambda c, s: _fifo(c / "tokenizer.json"), "tokenizer.json"),
    "character device": (lambda c, s: _device(c / "special_tokens_map.json"), "special_tokens_map.json"),
    "socket": (lambda c, s: _socket(c / "vocab.json"), "vocab.json"),
}


def _replace_with_link(path: Path, target: Path, text: str | None = None) -> None:
    """``path`` becomes a symlink to ``target`` outside, which holds what ``path`` held (or ``text``)."""
    target.write_text(path.read_text() if text is None else text)
    path.unlink()
    path.symlink_to(target)


def _chain(checkpoint: Path, secret: Path) -> None:
    (checkpoint / "hop").symlink_to(secret)  # `hop` is not uploaded, but the chain through it ends outside
    (checkpoint / "tokenizer.json").symlink_to("hop")


@pytest.mark.parametrize("plant", list(CHECKPOINT_PLANTS), ids=list(CHECKPOINT_PLANTS))
def test_push_refuses_what_leaves_the_checkpoint_before_uploading_anything(plant, skip, secret, local_hub, no_hang):
    make, name = CHECKPOINT_PLANTS[plant]
    make(skip, secret)
    before = {p.name: p.read_bytes() for p in skip.iterdir() if p.is_file() and not p.is_symlink()}
    for args in (["--dry-run"], []):
        line = error_line(invoke("push", skip, REPO, *args))
        assert f": {name} " in line and "refusing to read it for upload" in line, line
    assert local_hub.repos == {} and local_hub.commits == [] and local_hub.objects == {}  # not even a repo
    after = {p.name: p.read_bytes() for p in skip.iterdir() if p.is_file() and not p.is_symlink()}
    assert after == before  # the card was not rewritten either
    assert SECRET.decode() not in (skip / "README.md").read_text()


def test_a_symlink_that_stays_inside_is_read_as_its_target(skip, local_hub):
    (skip / "real").mkdir()
    (skip / "real" / "tokenizer.json").write_text('{"inside": true}')
    (skip / "tokenizer.json").symlink_to("real/tokenizer.json")
    assert "tokenizer.json" in listed_files(invoke("push", skip, REPO, "--dry-run").output)
    assert invoke("push", skip, REPO).exit_code == 0
    content = b'{"inside": true}'
    tree = local_hub.repos[("model", REPO)]["files"]
    assert tree["tokenizer.json"] == hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def test_a_hard_link_is_uploaded_as_the_file_it_is(skip, local_hub, tmp_path):
    """Decision (see surgery/publish/files.py): a hard link is the file itself, like a `cp -al` copy."""
    other = tmp_path / "vocab.txt"
    other.write_text("a\nb\n")
    os.link(other, skip / "vocab.txt")
    assert invoke("push", skip, REPO).exit_code == 0
    assert "vocab.txt" in local_hub.repos[("model", REPO)]["files"]


def test_a_file_swapped_for_a_symlink_after_its_check_is_uploaded_as_checked(skip, secret, local_hub, monkeypatch):
    """TOCTOU: the upload reads the descriptor that was checked, not the name, which now points at the secret."""
    real_open = push_module.open_inside
    original = (skip / "config.json").read_bytes()

    def open_then_swap(root, name, what):
        handle = real_open(root, name, what)
        if name == "config.json":
            (root / "config.json.new").symlink_to(secret)
            os.replace(root / "config.json.new", root / "config.json")
        return handle

    monkeypatch.setattr(push_module, "open_inside", open_then_swap)
    assert invoke("push", skip, REPO).exit_code == 0
    tree = local_hub.repos[("model", REPO)]["files"]
    assert tree["config.json"] == hashlib.sha1(b"blob %d\0" % len(original) + original).hexdigest()


def test_a_file_swapped_for_a_symlink_between_plan_and_upload_is_refused(skip, secret, local_hub, monkeypatch):
    real_plan = push_module.plan_push

    def plan_then_swap(config):
        plan = real_plan(config)
        (skip / "generation_config.json").unlink()
        (skip / "generation_config.json").symlink_to(secret)
        return plan

    monkeypatch.setattr(push_module, "plan_push", plan_then_swap)
    assert "generation_config.json resolves through a symlink" in error_line(invoke("push", skip, REPO))
    assert local_hub.repos == {} and local_hub.commits == [] and local_hub.objects == {}  # before any network call


def test_without_proc_the_checked_open_files_themselves_are_uploaded(skip, local_hub, monkeypatch):
    import surgery.publish.files as files

    monkeypatch.setattr(files, "_PROC_FD", Path("/nonexistent/proc/self/fd"))
    assert invoke("push", skip, REPO).exit_code == 0
    shards = sorted(skip.glob("*.safetensors"))
    tree = local_hub.repos[("model", REPO)]["files"]
    assert all(tree[p.name] == hashlib.sha256(p.read_bytes()).hexdigest() for p in shards)


# ------------------------------------------------------------------------------------------- --include-onnx


def _export(skip: Path, folder: Path, **record) -> Path:
    """A stand-in `surgery export onnx` folder of ``skip``: graph bytes, its config, surgery.json, export.json."""
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\x08\x07onnx")
    shutil.copy(skip / "config.json", folder / "config.json")
    shutil.copy(skip / "surgery.json", folder / "surgery.json")
    parity = {"max_abs_diff": 1e-6, "tolerance": 1e-3, "generation_checked": False, "passed": True}
    (folder / "export.json").write_text(json.dumps({"task": "text-generation-with-past", "parity": parity, **record}))
    return folder


ONNX_PLANTS = {
    "file symlink": (lambda o, s: (o / "model.onnx_data").symlink_to(s), "model.onnx_data"),
    "directory symlink": (lambda o, s: (o / "extra").symlink_to(s.parent), "extra"),
    "deep symlink": (
        lambda o, s: (o / "a" / "b").mkdir(parents=True) or (o / "a" / "b" / "c.txt").symlink_to(s),
        "a/b/c.txt",
    ),  # fmt: skip
    "symlink loop": (lambda o, s: (o / "loop").symlink_to("."), "loop"),
    "FIFO": (lambda o, s: _fifo(o / "model.onnx_data"), "model.onnx_data"),
    "export.json symlink": (lambda o, s: _replace_with_link(o / "export.json", s), "export.json"),
}


@pytest.mark.parametrize("plant", list(ONNX_PLANTS), ids=list(ONNX_PLANTS))
def test_include_onnx_refuses_what_leaves_the_export(plant, skip, secret, tmp_path, local_hub, no_hang):
    onnx = _export(skip, tmp_path / "onnx")
    make, name = ONNX_PLANTS[plant]
    make(onnx, secret)
    for args in (["--dry-run"], []):
        line = error_line(invoke("push", skip, REPO, "--include-onnx", onnx, *args))
        assert f"--include-onnx {onnx.resolve()}: {name} " in line, line
    assert local_hub.repos == {} and local_hub.commits == [] and local_hub.objects == {}


def _edit_record(path: Path, edit) -> None:
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def _identity_of(skip: Path) -> str:
    from surgery.publish.checkpoint import read_checkpoint, weights_identity

    return weights_identity(read_checkpoint(skip))


OTHER_EXPORTS = {
    "re-applied (other apply date)": (
        lambda o, c: _edit_record(o / "surgery.json", lambda r: r["history"][0].update(date="2020-01-01T00:00:00")),
        "stages that made its weights",
    ),
    "fine-tuned since": (
        lambda o, c: _edit_record(
            c / "surgery.json",
            lambda r: r["history"].append({"stage": "finetune", "surgery_version": "0", "date": "d", "details": {}}),
        ),
        "stages that made its weights",
    ),
    "other output": (
        lambda o, c: _edit_record(o / "surgery.json", lambda r: r["output"].update(stored_layers=99)),
        "differs in output",
    ),
    "no record at all": (lambda o, c: (o / "surgery.json").unlink(), "nothing shows it was exported from"),
    "other shapes": (
        lambda o, c: _edit_record(o / "config.json", lambda r: r.update(hidden_size=r["hidden_size"] * 2)),
        "differs from this checkpoint's in hidden_size",
    ),
    "other fingerprint": (
        lambda o, c: _edit_record(
            o / "export.json", lambda r: r.update(source_checkpoint={"path": "../x", "identity": "sha256:" + "0" * 64})
        ),
        "fingerprint of the weights and config it was made from",
    ),
    "exported from the Hub": (
        lambda o, c: _edit_record(
            o / "export.json", lambda r: r.update(source_checkpoint={"hub": "org/other", "identity": "hub:org/other"})
        ),
        "exported from the Hub model 'org/other'",
    ),
    "parity not a number": (
        lambda o, c: _edit_record(o / "export.json", lambda r: r["parity"].update(max_abs_diff="tiny")),
        "export.json: parity.max_abs_diff",
    ),
    "parity NaN": (
        lambda o, c: (o / "export.json").write_text('{"task": "feature-extraction", "parity": {"max_abs_diff": NaN}}'),
        "export.json: parity.max_abs_diff",
    ),
    "parity failed": (
        lambda o, c: _edit_record(o / "export.json", lambda r: r["parity"].update(passed=False)),
        "records a failed parity check",
    ),
    "task with HTML": (
        lambda o, c: _edit_record(o / "export.json", lambda r: r.update(task="<script>alert(1)</script>")),
        "export.json: task",
    ),
    "export.json a list": (lambda o, c: (o / "export.json").write_text("[1, 2]"), "not a JSON object"),
}


@pytest.mark.parametrize("case", list(OTHER_EXPORTS), ids=list(OTHER_EXPORTS))
def test_include_onnx_of_another_model_is_refused(case, skip, tmp_path, fake):
    onnx = _export(skip, tmp_path / "onnx")
    make, fragment = OTHER_EXPORTS[case]
    make(onnx, skip)
    assert fragment in error_line(invoke("push", skip, REPO, "--include-onnx", onnx, "--dry-run"))
    assert fake.calls == []


def test_include_onnx_with_a_matching_fingerprint_is_accepted(skip, tmp_path, fake):
    onnx = _export(skip, tmp_path / "onnx", source_checkpoint={"path": "../tiny-skip", "identity": _identity_of(skip)})
    (onnx / "surgery.json").unlink()  # the fingerprint alone shows where it comes from
    result = invoke("push", skip, REPO, "--include-onnx", onnx, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "checked against the PyTorch model of this checkpoint" in result.output
    (skip / "model-00001-of-00002.safetensors").write_bytes(b"changed weights")  # not the exported ones any more
    assert "fingerprint of the weights" in error_line(invoke("push", skip, REPO, "--include-onnx", onnx, "--dry-run"))


# ----------------------------------------------------------------------------------------- URLs in messages


@pytest.mark.parametrize(
    "text, leaked",
    [
        ("http://user:password@hub.example:8080/api", "password"),
        ("https://user:p@ss@hub.example/api", "ss@hub"),
        ("https://hub.example/api/x?token=hf_abcdefghijklmnop&rev=main", "abcdefghijklmnop"),
        ("requests: Max retries exceeded with url: https://u:secret@h/api (Caused by x)", "secret"),
        ("headers: Authorization: Bearer abcdef123456", "abcdef123456"),
        ("token hf_0123456789abcdefXYZ in a message", "0123456789"),
        ("two http://a:one@h1/x and http://b:two@h2/y", "two@"),
    ],
)
def test_redaction_removes_userinfo_query_values_and_tokens(text, leaked):
    redacted = redact_url_secrets(text)
    assert leaked not in redacted and "***" in redacted
    assert redact_url_secrets("https://huggingface.co/me/model is fine") == "https://huggingface.co/me/model is fine"


ENDPOINT = "http://user:password@hub.invalid:8080"


def test_an_unreachable_endpoint_is_named_without_its_password(skip, fake, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", ENDPOINT)
    monkeypatch.setattr(hub, "prepare_hub", lambda: True)
    line = error_line(invoke("push", skip, REPO))
    assert "http://***@hub.invalid:8080" in line and "password" not in line and "user:" not in line


@pytest.mark.parametrize(
    "error",
    [
        requests.ConnectionError(f"Max retries exceeded with url: {ENDPOINT}/api/repos/create?token=hf_secrettoken123"),
        _http_error(HfHubHTTPError, 500, f"Server Error for url: {ENDPOINT}/api?sig=abc"),
        _http_error(HfHubHTTPError, 401, f"bad token for {ENDPOINT}"),
    ],
    ids=["connection", "http 500", "http 401"],
)
def test_hub_errors_do_not_echo_secrets(error, skip, fake, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", ENDPOINT)
    fake.fail = {"create_repo": [error]}
    line = error_line(invoke("push", skip, REPO))
    assert "password" not in line and "secrettoken" not in line and "sig=abc" not in line, line


def test_the_pushed_urls_are_printed_without_secrets(skip, fake, monkeypatch):
    monkeypatch.setattr(fake, "create_repo", lambda repo_id, **kw: f"{ENDPOINT}/{repo_id}")
    result = invoke("push", skip, REPO)
    assert result.exit_code == 0 and "http://***@hub.invalid:8080/me/tiny-skip" in result.output
    assert "password" not in result.output
