"""Every way a model folder can bring code needs --trust-remote-code, on every command that loads a model.

Routes (surgery.io.model_code): ``auto_map`` in any config transformers reads, ``custom_generate/generate.py``
(transformers 4.57 imports it from a local folder whatever trust_remote_code says), ``custom_pipelines``, a Hub
kernel as ``attn_implementation``, and ``adapter_config.json`` (the base model it names is loaded instead). Each
command runs in a subprocess; a planted module writes a marker file if it is ever imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from surgery.apply.materialize import apply_plan
from surgery.architectures.loading import check_loadable
from surgery.errors import SurgeryError
from surgery.io.model_ref import ModelRef, remote_code_policy, ships_our_code

SURGERY = [sys.executable, "-m", "surgery.cli"]
EVIL = "import pathlib\npathlib.Path({marker!r}).write_text('code ran')\n"
GENERATE = EVIL + "\n\ndef generate(model, *args, **kwargs):\n    raise RuntimeError('planted generate')\n"
EVIL_MODULE = EVIL + "from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel\n"


def _json_update(path: Path, **values) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**data, **values}))


def _evil_py(folder: Path, marker: Path) -> None:
    (folder / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))


def _custom_generate(folder: Path, marker: Path) -> None:
    (folder / "custom_generate").mkdir()
    (folder / "custom_generate" / "generate.py").write_text(GENERATE.format(marker=str(marker)))


def _auto_map_in(name: str, key: str, value):
    def plant(folder: Path, marker: Path) -> None:
        _evil_py(folder, marker)
        _json_update(folder / name, auto_map={key: value})

    return plant


def _custom_pipelines(folder: Path, marker: Path) -> None:
    _evil_py(folder, marker)
    pipeline = {"impl": "evil.EvilModel", "pt": ["AutoModelForCausalLM"], "tf": [], "type": "text"}
    _json_update(folder / "config.json", custom_pipelines={"evil-task": pipeline})


def _hub_kernel(folder: Path, marker: Path) -> None:  # noqa: ARG001 - nothing local to import: a download
    _json_update(folder / "config.json", attn_implementation="evil-org/evil-kernel")


def _adapter(folder: Path, marker: Path) -> None:
    """adapter_config.json naming another folder, which carries the code: transformers would load *that*."""
    base = folder.parent / (folder.name + "-base")
    shutil.copytree(folder, base)
    _custom_generate(base, marker)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "peft_type": "LORA"}))


# route -> (plant(folder, marker), fragment the refusal names)
ROUTES = {
    "auto_map-config": (
        _auto_map_in("config.json", "AutoModelForCausalLM", "evil.EvilModel"),
        "auto_map in config.json: evil.EvilModel",
    ),
    "auto_map-tokenizer": (
        _auto_map_in("tokenizer_config.json", "AutoTokenizer", ["evil.EvilModel", None]),
        "auto_map in tokenizer_config.json",
    ),
    "auto_map-processor": (
        _auto_map_in("processor_config.json", "AutoProcessor", "evil.EvilModel"),
        "processor_config.json",
    ),
    "auto_map-preprocessor": (
        _auto_map_in("preprocessor_config.json", "AutoImageProcessor", "evil.EvilModel"),
        "preprocessor_config.json",
    ),
    "auto_map-generation": (
        _auto_map_in("generation_config.json", "AutoConfig", "evil.EvilConfig"),
        "generation_config.json",
    ),
    "auto_map-other-repo": (
        _auto_map_in("config.json", "AutoModelForCausalLM", "evil-org/evil-repo--modeling.Evil"),
        "evil-org/evil-repo--modeling.Evil",
    ),
    "custom_generate": (_custom_generate, "custom_generate/generate.py"),
    "custom_pipelines": (_custom_pipelines, "custom_pipelines in config.json"),
    "hub_kernel": (_hub_kernel, "attn_implementation: evil-org/evil-kernel"),
    "adapter": (_adapter, "adapter_config.json"),
}
SURGERY_ROUTES = ["custom_generate", "auto_map-tokenizer", "auto_map-processor", "adapter"]


def _commands(model: Path, tmp: Path, data: Path, texts: Path) -> dict[str, list[str]]:
    return {
        "similarity": ["similarity", str(model), "--data", str(texts), "--limit", "2", "--out", str(tmp / "o"), "-q"],
        "eval": ["eval", str(model), "--tasks", "lambada_openai", "--data-dir", str(data), "--limit", "1"],
        "glue": ["glue", str(model), "--tasks", "rte", "--data-dir", str(data), "--output", str(tmp / "g.json")],
        "finetune": ["finetune", str(model), str(tmp / "o"), "--method", "full", "--data", str(data / "ft.jsonl")],
        "export": ["export", "onnx", str(model), str(tmp / "o")],
        "bench": ["bench", str(model), "--out", str(tmp / "o")],
        "sweep": ["sweep", "recipes/paper/fig04_skip.yaml", "--model", str(model), "--out", str(tmp / "o")]
        + ["--data-dir", str(data), "--limit", "1"],
    }


COMMANDS = ["similarity", "eval", "glue", "finetune", "export", "bench", "sweep"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    root = Path(__file__).parent.parent
    return subprocess.run([*SURGERY, *args], capture_output=True, text=True, env=env, timeout=300, cwd=root)


def _refused(result, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def surgery_checkpoint(tiny_checkpoints, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("consent-surgery") / "par"
    apply_plan(str(tiny_checkpoints["llama"]), "parallel:2-4", out)
    return out


def _hostile(source: Path, tmp: Path, route: str) -> tuple[Path, Path]:
    model, marker = tmp / "hostile", tmp / "pwned"
    shutil.copytree(source, model)
    ROUTES[route][0](model, marker)
    return model, marker


def _invoke(args: list[str]):
    """One command in this process (CliRunner): exit code and stderr as the CLI gives them."""
    from click.testing import CliRunner

    from surgery.cli.main import main as cli

    cwd = os.getcwd()
    os.chdir(Path(__file__).parent.parent)  # the sweep recipe path is relative to the repository
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_code_route_needs_consent_on_every_command(route, tiny_checkpoints, inputs, tmp_path):
    model, marker = _hostile(tiny_checkpoints["llama"], tmp_path, route)
    data, texts = inputs
    flag = [] if route == "adapter" else ["--trust-remote-code"]  # an adapter redirect is refused outright
    before = set(tmp_path.rglob("*"))
    for command, args in _commands(model, tmp_path, data, texts).items():
        _refused(_invoke(args), ROUTES[route][1], *flag)
        assert not marker.exists(), command
        assert set(tmp_path.rglob("*")) == before, command  # nothing written by the refused command


@pytest.mark.parametrize("command", COMMANDS)
def test_custom_generate_is_refused_by_every_command_in_a_fresh_process(command, tiny_checkpoints, inputs, tmp_path):
    """The issue's case, end to end: `surgery COMMAND` exits 2 with one line, and the planted generate never runs."""
    model, marker = _hostile(tiny_checkpoints["llama"], tmp_path, "custom_generate")
    data, texts = inputs
    before = set(tmp_path.rglob("*"))
    _refused(
        _run(_commands(model, tmp_path, data, texts)[command]), "custom_generate/generate.py", "--trust-remote-code"
    )
    assert not marker.exists()
    assert set(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("route", SURGERY_ROUTES)
def test_a_verified_surgery_checkpoint_with_planted_code_is_refused(route, surgery_checkpoint, inputs, tmp_path):
    """The modeling files pass the hash check, but a planted custom_generate/ (or another config's auto_map) is
    still foreign code: the checkpoint no longer counts as shipping only surgery's code."""
    assert check_loadable(str(surgery_checkpoint))[2] is True  # as written by apply: trusted without the flag
    model, marker = _hostile(surgery_checkpoint, tmp_path, route)
    config = json.loads((model / "config.json").read_text())
    assert ships_our_code(ModelRef.parse(str(model)), config) is (route == "adapter")  # adapter: refused apart
    data, texts = inputs
    for command, args in _commands(model, tmp_path, data, texts).items():
        _refused(_invoke(args), ROUTES[route][1])
        assert not marker.exists(), command


@pytest.mark.parametrize("route", list(ROUTES))
def test_apply_and_plan_show_run_no_code_and_carry_none_over(route, tiny_checkpoints, tmp_path):
    """apply reads weights and JSON only; its output drops every code reference and loads without consent."""
    model, marker = _hostile(tiny_checkpoints["llama"], tmp_path, route)
    shown = _invoke(["plan", "show", "--plan", "skip:1", str(model)])
    assert shown.returncode == 0, shown.stderr
    for plan in ("skip:1", "parallel:2-3"):  # source architecture, and the surgery class (transformers config)
        out = tmp_path / plan.replace(":", "_")
        apply_plan(str(model), plan, out)
        assert not marker.exists()
        assert not (out / "custom_generate").exists() and not (out / "evil.py").exists()
        for name in ("config.json", "tokenizer_config.json", "generation_config.json"):
            if (out / name).is_file():
                data = json.loads((out / name).read_text())
                assert not {"custom_pipelines", "attn_implementation"} & set(data), (name, data)
                assert set(data.get("auto_map", {}).values()) <= {
                    "configuration_surgery.SurgeryConfig",
                    "modeling_surgery.SurgeryForCausalLM",
                }, (name, data)
        assert check_loadable(str(out))[2] is (plan != "skip:1")  # only surgery's own verified code is trusted


def test_custom_generate_is_a_real_route_in_transformers(tiny_checkpoints, tmp_path):
    """The reason for the check: transformers 4.57 imports a local custom_generate/generate.py even with
    trust_remote_code=False (5.x: whenever it is True, which surgery passes for its own checkpoints)."""
    import transformers
    from transformers import AutoModelForCausalLM

    model, marker = _hostile(tiny_checkpoints["llama"], tmp_path, "custom_generate")
    with pytest.raises(SurgeryError, match="custom_generate/generate.py.*--trust-remote-code"):
        check_loadable(str(model))
    assert not marker.exists()
    trust = int(transformers.__version__.split(".")[0]) >= 5
    AutoModelForCausalLM.from_pretrained(str(model), trust_remote_code=trust)
    assert marker.exists()


def test_consent_lets_the_code_run(tiny_checkpoints, inputs, tmp_path):
    """With --trust-remote-code the same folder loads, and transformers imports the planted module."""
    from sweep_fixtures import tiny_llama_with_tokenizer

    source = tiny_llama_with_tokenizer(tiny_checkpoints["llama"], tmp_path / "with-tokenizer")
    model, marker = _hostile(source, tmp_path, "custom_generate")
    _, texts = inputs
    args = ["similarity", str(model), "--data", str(texts), "--limit", "2", "--out", str(tmp_path / "o"), "-q"]
    result = _invoke([*args, "--trust-remote-code"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert marker.exists()


def test_gguf_folder_routes_need_consent(tmp_path):
    """transformers reads the folder around a .gguf file too (tokenizer config, custom_generate, adapter)."""
    folder = tmp_path / "gguf"
    folder.mkdir()
    gguf = folder / "model.gguf"
    gguf.write_bytes(b"GGUF")  # parsing MODEL does not read it; the policy looks only at the folder
    ref, config = ModelRef.parse(str(gguf)), {"model_type": "llama", "num_hidden_layers": 2}
    assert ref.kind == "gguf" and remote_code_policy(ref, config, trust_remote_code=False) is False
    marker = tmp_path / "pwned"
    _custom_generate(folder, marker)
    with pytest.raises(SurgeryError, match="custom_generate/generate.py.*--trust-remote-code"):
        remote_code_policy(ref, config, trust_remote_code=False)
    shutil.rmtree(folder / "custom_generate")
    _auto_map_in("tokenizer_config.json", "AutoTokenizer", ["evil.EvilModel", None])(folder, marker)
    with pytest.raises(SurgeryError, match="tokenizer_config.json"):
        remote_code_policy(ref, config, trust_remote_code=False)
    assert remote_code_policy(ref, config, trust_remote_code=True) is True
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    with pytest.raises(SurgeryError, match="adapter_config.json.*'org/base'"):
        remote_code_policy(ref, config, trust_remote_code=True)
    assert not marker.exists()


def test_every_route_is_named_and_consent_is_the_only_way_past(tiny_checkpoints, tmp_path):
    """In-process: each route is refused naming its file, and the user's flag (only) turns it into trust."""
    for number, route in enumerate(ROUTES):
        folder = tmp_path / str(number)
        folder.mkdir()
        model, marker = _hostile(tiny_checkpoints["llama"], folder, route)
        ref = ModelRef.parse(str(model))
        config = ref.read_config()
        with pytest.raises(SurgeryError, match="adapter_config.json" if route == "adapter" else "--trust-remote"):
            remote_code_policy(ref, config, trust_remote_code=False)
        if route != "adapter":
            assert remote_code_policy(ref, config, trust_remote_code=True) is True
        assert not marker.exists()
