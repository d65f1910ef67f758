"""What a converted folder publishes: the model card, remote code that loads with transformers alone, and
the exact upload to the Hub (the Hub itself is replaced by a recorder: there is no network here)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, save_torch_state_dict
from safetensors.torch import load_file

import modeling_pi  # noqa: F401
import pi_cli
from conftest import FIXTURES, OPENPI, load_fixture_io
from conversion import push
from conversion.convert_openpi import convert_openpi
from conversion.remote_code import remote_code_files

PROCESSOR = FIXTURES / "processor"
CODE_FILES = {"configuration_pi.py", "modeling_pi.py", "input_checks.py", "flow_matching.py", "action_expert.py",
              "joint_attention.py", "cpu_linears.py", "compiled_generation.py", "fast_decoding.py", "real_time_chunking.py", "quantization.py", "processing_pi.py", "normalization.py",
              "prompts.py", "image_processing_pi.py", "fast_action_tokenizer.py", "robots.py"}
TITLES = {"pi0": "π0", "pi05": "π0.5", "pi0_fast": "π0-FAST"}
CITATIONS = {"pi0": "2410.24164", "pi05": "2504.16054", "pi0_fast": "2501.09747"}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """variant -> a converted folder with its processor, as `pi convert openpi --tokenizer ...` writes it."""
    folders = {}

    def get(variant: str) -> Path:
        if variant not in folders:
            sizes = json.loads((OPENPI / variant / "fixture.json").read_text())
            folders[variant] = convert_openpi(
                OPENPI / variant, variant, tmp_path_factory.mktemp("published") / f"{variant}-fixture", progress=False,
                action_horizon=sizes["action_horizon"], max_token_len=sizes["max_token_len"],
                tokenizer=PROCESSOR / "tokenizer.model",
                fast_tokenizer=PROCESSOR / "fast_tokenizer" if variant == "pi0_fast" else None,
                license="gemma", base_model="org/pi-base",
            )
        return folders[variant]

    return get


@pytest.mark.parametrize("variant", ["pi0", "pi05", "pi0_fast"])
def test_model_card_metadata_and_contents_come_from_the_config(published, variant):
    folder = published(variant)
    card = ModelCard.load(folder / "README.md")
    config = json.loads((folder / "config.json").read_text())
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "robotics"
    assert card.data.license == "gemma" and card.data.base_model == "org/pi-base"
    assert {"robotics", "vision-language-action", variant} <= set(card.data.tags)
    assert ("flow-matching" in card.data.tags) == (variant != "pi0_fast")
    text = card.text
    assert text.startswith(f"\n# {TITLES[variant]} ({folder.name})")
    assert CITATIONS[variant] in text and "## Fine-tuning" in text and "## Parity with the reference" in text
    assert all(f"`{camera}`" in text for camera in config["image_keys"])
    dims = "the robot's dims, as FAST tokens" if variant == "pi0_fast" else f"{config['action_dim']} dims"  # FAST: unpadded
    assert f"{config['action_horizon']} steps × {dims}" in text
    assert f'AutoModel.from_pretrained("{folder.name}", trust_remote_code=True)' in text
    prompt = {"pi0": 'BOS + instruction + "\\n"', "pi05": '"Task: {instruction}, State: {bins};\\nAction: "',
              "pi0_fast": '"Action: " + FAST tokens + "|" + EOS'}[variant]
    assert prompt in text
    assert ("z-score" in text) == (variant == "pi0") and ("quantile" in text) == (variant != "pi0")


_BLOCK_THIS_PROJECT = """
import importlib.abc, sys
OURS = {"configuration_pi", "modeling_pi", "processing_pi", "conversion", "training_pi", "model_cards", "pi_cli"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in OURS:
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Block())
"""


def _python(script: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("variant", ["pi05", "pi0_fast"])
def test_remote_code_loads_and_runs_where_only_transformers_is_installed(published, tmp_path, variant):
    folder = published(variant)
    io = load_fixture_io(variant)
    inputs = {name: io[name] for name in ("pixel_values", "pixel_attention_mask", "input_ids", "attention_mask")}
    options = {"noise": io["noise"], "num_steps": 3} if variant == "pi05" else {"max_new_tokens": 6}
    torch.save({**inputs, **options}, tmp_path / "inputs.pt")
    script = _BLOCK_THIS_PROJECT + f"""
import torch
from transformers import AutoModel, AutoProcessor
try:
    import modeling_pi
    raise SystemExit("this project is importable: the test proves nothing")
except ImportError:
    pass
model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
with torch.no_grad():
    torch.save(model.generate_actions(**torch.load("inputs.pt")), "actions.pt")
"""
    result = _python(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    model = modeling_pi.PiForActionGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = model.generate_actions(**inputs, **options)
    assert torch.equal(torch.load(tmp_path / "actions.pt"), expected)


_BLOCK_PILLOW = """
class NoPillow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "PIL":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoPillow())
"""


def test_without_pillow_the_remote_processor_says_what_to_install(published, tmp_path):
    folder = published("pi05")
    script = _BLOCK_THIS_PROJECT + _BLOCK_PILLOW + f"""
from transformers import AutoModel, AutoProcessor
AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)  # the model's code needs no Pillow
try:
    AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
except ImportError as err:
    print(err)
else:
    raise SystemExit("the processor loaded without Pillow: the test proves nothing")
"""
    result = _python(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "the π processor needs Pillow: pip install pillow"


def test_with_this_project_installed_nothing_from_the_folder_is_executed(published, tmp_path):
    folder = published("pi05")
    script = f"""
import sys
import modeling_pi
from transformers import AutoConfig, AutoModel, AutoProcessor
for trust in (None, True):
    loaded = [AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=trust),
              AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=trust),
              AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=trust)]
    assert [type(x).__module__.split(".")[0] for x in loaded] == ["configuration_pi", "modeling_pi", "processing_pi"]
assert not [name for name in sys.modules if name.startswith("transformers_modules")], "folder code was imported"
"""
    result = _python(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_remote_code_files_import_each_other_relatively():
    files = remote_code_files()
    assert set(files) == CODE_FILES
    for name, source in files.items():
        for package in ("configuration_pi", "modeling_pi", "processing_pi"):
            assert f"from {package}" not in source and f"import {package}" not in source, name


class RecordingHub:
    """Stands in for `HfApi`: records the repository and the one commit instead of uploading."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def create_commit(self, repo_id, operations, commit_message=None, repo_type=None):
        files = {op.path_in_repo: op.path_or_fileobj for op in operations}
        self.calls.append(("create_commit", repo_id, files))

        class Commit:
            commit_url = f"https://hub.invalid/{repo_id}/commit/1"

        return Commit()


def _read(source) -> bytes:
    return Path(source).read_bytes() if isinstance(source, (str, Path)) else source


@pytest.fixture
def hub(monkeypatch):
    RecordingHub.calls = []
    monkeypatch.setattr(push, "HfApi", RecordingHub)
    return RecordingHub


@pytest.mark.parametrize("variant", ["pi05", "pi0_fast"])
def test_pi_push_uploads_exactly_the_folder_the_code_and_a_card_naming_the_repo(published, hub, capsys, variant):
    folder = published(variant)
    assert pi_cli.main(["push", str(folder), "org/pi-test", "--private"]) == 0
    assert "https://hub.invalid/org/pi-test/commit/1" in capsys.readouterr().out
    (_, repo_id, private, exist_ok), (_, commit_repo, files) = hub.calls
    assert (repo_id, private, exist_ok, commit_repo) == ("org/pi-test", True, True, "org/pi-test")
    expected = {"config.json", "model.safetensors", "README.md", "processor_config.json", "tokenizer.json",
                "tokenizer_config.json", *CODE_FILES}
    if variant == "pi0_fast":
        expected |= {f"fast_tokenizer/{p.name}" for p in (folder / "fast_tokenizer").iterdir()}
    assert set(files) == expected
    assert _read(files["model.safetensors"]) == (folder / "model.safetensors").read_bytes()
    config = json.loads(_read(files["config.json"]))
    assert config["auto_map"]["AutoModel"] == "modeling_pi.PiForActionGeneration" and config["variant"] == variant
    assert json.loads(_read(files["processor_config.json"]))["auto_map"] == {"AutoProcessor": "processing_pi.PiProcessor"}
    card = ModelCard(_read(files["README.md"]).decode())
    assert card.data.pipeline_tag == "robotics" and card.data.library_name == "transformers" and variant in card.data.tags
    assert '"org/pi-test"' in card.text and f'"{folder.name}"' not in card.text and "--model org/pi-test " in card.text
    assert card.text.lstrip().splitlines()[0].endswith("(org/pi-test)")


def test_the_card_is_retargeted_from_the_name_it_gives_whatever_the_folder_is_called(published, tmp_path, capsys):
    """A folder renamed, copied or pushed before still has its card name the repository it goes to; an adapter whose
    base is a local folder stays home."""
    folder = Path(shutil.copytree(published("pi0"), tmp_path / "renamed"))
    first = push.hub_files(folder, "org/first")["README.md"].decode()
    assert "(org/first)" in first and '"pi0-fixture"' not in first
    (folder / "README.md").write_text(first)  # as pushed once, then pushed elsewhere
    second = push.hub_files(folder, "org/second")["README.md"].decode()
    assert "(org/second)" in second and '"org/first"' not in second and 'from_pretrained("org/second"' in second

    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "base")}))
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    assert not any(name.startswith("adapter/") for name in push.hub_files(folder, "org/second"))
    assert f"adapter/ is left out: its base model is the local folder {tmp_path / 'base'}" in capsys.readouterr().err
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/pi-base"}))
    assert "adapter/adapter_config.json" in push.hub_files(folder, "org/second")


def test_sharded_weights_are_pushed_whole_and_training_leftovers_are_not(published, tmp_path, hub):
    source = published("pi0")
    folder = tmp_path / "trained"
    folder.mkdir()
    for name in ("config.json", "README.md"):
        (folder / name).write_bytes((source / name).read_bytes())
    save_torch_state_dict(load_file(source / "model.safetensors"), folder, max_shard_size="200KB")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    for leftover in ("checkpoint-100/model.safetensors", ".cache/huggingface/x.lock", "adapter/adapter_config.json"):
        (folder / leftover).parent.mkdir(parents=True, exist_ok=True)
        (folder / leftover).write_text("{}")
    files = push.hub_files(folder, "org/trained")
    assert set(files) == {"config.json", "README.md", "model.safetensors.index.json", *shards,
                          "adapter/adapter_config.json", *CODE_FILES}
    assert modeling_pi.PiForActionGeneration.from_pretrained(folder).num_parameters() == sum(
        t.numel() for t in load_file(source / "model.safetensors").values())

    (folder / shards[0]).unlink()
    with pytest.raises(push.PushError, match=shards[0]):
        push.hub_files(folder, "org/trained")


def test_convert_push_to_hub_writes_then_publishes(tmp_path, hub, capsys):
    code = pi_cli.main(["convert", "openpi", "--checkpoint", str(OPENPI / "pi05"), "--variant", "pi05",
                        "--output", str(tmp_path / "out"), "--push-to-hub", "org/pi05-fixture"])
    assert code == 0, capsys.readouterr().err
    (_, repo_id, private, _), (_, _, files) = hub.calls
    assert repo_id == "org/pi05-fixture" and not private and "model.safetensors" in files
    assert 'from_pretrained("org/pi05-fixture")' in (tmp_path / "out" / "README.md").read_text()
    assert pi_cli.main(["convert", "openpi", "--checkpoint", str(OPENPI / "pi05"), "--output", str(tmp_path / "alone"),
                        "--private"]) == 0
    assert "--private applies to --push-to-hub, which was not given" in capsys.readouterr().err and len(hub.calls) == 2


def test_push_refuses_what_is_not_a_complete_pi_folder(published, tmp_path, hub, capsys):
    assert pi_cli.main(["push", str(published("pi05")), "not a repo id"]) == 1
    assert "not a Hub repository id" in capsys.readouterr().err
    assert pi_cli.main(["push", str(published("pi05")), "no-org"]) == 1
    assert "ORG/NAME" in capsys.readouterr().err
    assert pi_cli.main(["push", str(tmp_path), "org/x"]) == 1
    assert "not a π model folder" in capsys.readouterr().err
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "pi"}))
    (folder / "README.md").write_text("card")
    assert pi_cli.main(["push", str(folder), "org/x"]) == 1
    assert "no model.safetensors" in capsys.readouterr().err
    assert hub.calls == []


def test_a_hub_that_cannot_be_reached_is_one_line_naming_it(published, monkeypatch, capsys):
    class ConnectError(push.CLIENT_ERROR):
        """As the Hub's HTTP client raises without a network (httpx's ConnectError is no OSError)."""

    class Unreachable(RecordingHub):
        def create_repo(self, *args, **kwargs):
            raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(push, "HfApi", Unreachable)
    assert pi_cli.main(["push", str(published("pi05")), "org/x"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "pi push: error: cannot reach the Hub (ConnectError: [Errno -2] Name or service not known)", err


def test_dry_run_lists_the_upload_and_sends_nothing(published, hub, capsys):
    assert pi_cli.main(["push", str(published("pi05")), "org/x", "--dry-run"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"model.safetensors", "config.json", "README.md", "modeling_pi.py"} <= set(listed)
    assert hub.calls == []


def test_push_uploads_regular_files_and_hub_cache_links_only(published, tmp_path, hub):
    source = published("pi0")
    cache = tmp_path / "models--org--pi0"  # the Hub cache's layout: snapshot links into the blob store
    snapshot, blobs = cache / "snapshots" / "abc123", cache / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, path in enumerate(sorted(p for p in source.rglob("*") if p.is_file())):
        blob = blobs / f"blob{i}"
        blob.write_bytes(path.read_bytes())
        (snapshot / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / path.relative_to(source)).symlink_to(blob)
    assert set(push.hub_files(snapshot, "org/pi0")) == set(push.hub_files(source, "org/pi0"))

    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub")
    outside = tmp_path / "outside"
    outside.mkdir()
    for link, target in (("notes.txt", secret), ("extra", outside)):
        folder = tmp_path / f"with_{link}"
        shutil.copytree(source, folder)
        (folder / link).symlink_to(target)
        with pytest.raises(push.PushError, match=f"links or special files that are not uploaded: {link}"):
            push.hub_files(folder, "org/pi0")
    assert hub.calls == []
