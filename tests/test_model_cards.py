"""The model card's examples run as written: a folder is published under a repository name (its files laid out
locally as the Hub would hold them), and every python block of its card is executed from the directory above,
offline, so that a name that is not there fails instead of reaching the network. The card asserts a license and
a base model only where given or known, and describes sizes from the config."""

import argparse
import json
import os
import re
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import pi_cli
from configuration_pi import PiConfig
from conftest import OPENPI, PROCESSOR, tiny_config
from conversion import push
from conversion.convert_openpi import convert_openpi
from model_cards import GEMMA_LICENSE, PALIGEMMA, REMOTE_CODE_REQUIREMENTS, render_model_card, retarget_card
from demo_pi.recipe import task_tokenizer
from processing_pi import PiImageProcessor, PiProcessor

ROOT = Path(__file__).resolve().parents[1]
POLICIES = OPENPI.parent / "openpi_policies"
BLOCK_THIS_PROJECT = """
import importlib.abc, sys
OURS = {"configuration_pi", "modeling_pi", "processing_pi", "conversion", "training_pi", "model_cards", "pi_cli"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in OURS:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""
RUN_BLOCKS = """
import runpy, sys
for path in sys.argv[1:]:
    print(f"=== {path}", flush=True)
    runpy.run_path(path, run_name="__main__")
"""
# `print(...)  # [1, 50, 7]...`: what the example says it prints
PRINTED = re.compile(r"^print\(.*\)\s+#\s+(\[[\d, ]+\]|\([\d, ]+\)|\d+)", re.MULTILINE)


def _convert(variant: str, output: Path, with_processor: bool = True) -> Path:
    sizes = json.loads((OPENPI / variant / "fixture.json").read_text())
    processor = {"tokenizer": PROCESSOR / "tokenizer.model",
                 "fast_tokenizer": PROCESSOR / "fast_tokenizer" if variant == "pi0_fast" else None}
    return convert_openpi(OPENPI / variant, variant, output, progress=False, action_horizon=sizes["action_horizon"],
                          max_token_len=sizes["max_token_len"], **(processor if with_processor else {}))


def _fewer_new_tokens(folder: Path, budget: int = 16) -> Path:
    """A random model never writes EOS: it decodes its whole budget, 256 tokens by default; the examples do not
    depend on it, so a smaller one keeps the test short."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_new_tokens": budget}, indent=2))
    return folder


def _without_horizon(folder: Path) -> Path:
    """The folder with a processor that records neither the robot's action dims nor the chunk's length (as a
    `pi train` folder of a model whose processor never had them), and its card rendered for it."""
    processor = PiProcessor.from_pretrained(folder).replace(action_horizon=None)
    processor.save_pretrained(folder)
    config = PiConfig.from_pretrained(folder)
    render_model_card(config, 1, folder.name, "Converted.", processor=processor).save(folder / "README.md")
    return folder


def _convert_policy(name: str, output: Path) -> Path:
    args = ["convert", "openpi", "--checkpoint", POLICIES / name / "checkpoint", "--config", name,
            "--tokenizer", PROCESSOR / "tokenizer.model", "--output", output]
    assert pi_cli.main([str(arg) for arg in args]) == 0
    return output


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """kind -> (directory to run from, repository name): a converted folder's Hub files (`pi push`'s, card
    retargeted) laid out at directory/ORG/NAME."""
    made = {}
    build = {
        "pi05": lambda out: _convert("pi05", out),
        "pi0_fast": lambda out: _fewer_new_tokens(_convert("pi0_fast", out)),
        "pi0_fast without horizon": lambda out: _without_horizon(_fewer_new_tokens(_convert("pi0_fast", out))),
        "pi0 without processor": lambda out: _convert("pi0", out, with_processor=False),
        "pi05_droid policy": lambda out: _convert_policy("pi05_droid", out),
    }

    def get(kind: str) -> tuple[Path, str]:
        if kind not in made:
            folder = build[kind](tmp_path_factory.mktemp("converted") / "folder")
            repo_id = f"org/{kind.split()[0].replace('_', '-')}-card"
            run_dir = tmp_path_factory.mktemp("run")
            for name, source in push.hub_files(folder, repo_id).items():
                target = run_dir / repo_id / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read_bytes() if isinstance(source, Path) else source)
            made[kind] = run_dir, repo_id
        return made[kind]

    return get


def _blocks(card: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", card, flags=re.MULTILINE | re.DOTALL)


def _run(blocks: list[str], run_dir: Path, prefix: str = "") -> subprocess.CompletedProcess:
    paths = []
    for i, block in enumerate(blocks):
        path = run_dir / f"example_{i}.py"
        path.write_text(block)
        paths.append(path.name)
    env = {**os.environ, "HF_HOME": str(run_dir / "hf_home"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", prefix + RUN_BLOCKS, *paths], capture_output=True, text=True,
                          timeout=300, env=env, cwd=run_dir, stdin=subprocess.DEVNULL)


def _bash(command: str, run_dir: Path) -> subprocess.CompletedProcess:
    """The command run as a shell would, with this environment's `python` and `pi` first on the PATH."""
    env = {**os.environ, "HF_HOME": str(run_dir / "hf_home"), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-e", "-c", command], capture_output=True, text=True, timeout=300, env=env,
                            cwd=run_dir, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _check_printed(blocks: list[str], result: subprocess.CompletedProcess) -> None:
    """Each block ran and printed what its comment says."""
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    outputs = result.stdout.split("=== ")[1:]
    assert len(outputs) == len(blocks)
    for block, output in zip(blocks, outputs):
        claims = PRINTED.findall(block)
        assert claims, f"the example prints nothing it describes:\n{block}"
        printed = output.strip().splitlines()[1:]
        assert printed[-1] == claims[-1], f"printed {printed[-1]!r}, the card says {claims[-1]!r}:\n{block}"


def _card(run_dir: Path, repo_id: str) -> str:
    return (run_dir / repo_id / "README.md").read_text()


@pytest.mark.parametrize("kind", ["pi05", "pi0_fast", "pi0_fast without horizon", "pi0 without processor",
                                  "pi05_droid policy"])
def test_the_cards_python_examples_run_as_written_against_the_repository_name(published, kind):
    run_dir, repo_id = published(kind)
    card = _card(run_dir, repo_id)
    blocks = [block for block in _blocks(card, "python") if "import modeling_pi" in block]
    assert blocks and all(f'"{repo_id}"' in block for block in blocks)
    assert "..." not in card
    _check_printed(blocks, _run(blocks, run_dir))


@pytest.mark.parametrize("kind", ["pi05", "pi0 without processor"])
def test_the_transformers_alone_example_runs_where_this_project_is_not_installed(published, kind):
    run_dir, repo_id = published(kind)
    card = _card(run_dir, repo_id)
    blocks = [block for block in _blocks(card, "python") if "import modeling_pi" not in block]
    assert len(blocks) == 1 and "trust_remote_code=True" in blocks[0]
    assert all(requirement in card for requirement in REMOTE_CODE_REQUIREMENTS)
    _check_printed(blocks, _run(blocks, run_dir, prefix=BLOCK_THIS_PROJECT))


def test_the_cards_command_line_example_runs_as_written(published):
    run_dir, repo_id = published("pi05")
    commands = [block for block in _blocks(_card(run_dir, repo_id), "bash") if "pi generate" in block]
    assert len(commands) == 1
    out = json.loads(_bash(commands[0], run_dir).stdout.strip().splitlines()[-1])
    assert out["valid"] and len(out["actions"]) == 50


def test_a_robot_policys_card_names_the_observation_it_reads(published):
    run_dir, repo_id = published("pi05_droid policy")
    card = _card(run_dir, repo_id)
    assert "`observation/exterior_image_1_left`" in card and "`observation/joint_position`" in card
    assert f"pi serve --model {repo_id}`" in card and "pi generate" not in card


def test_a_full_size_model_is_described_as_paligemma_and_carries_its_lineage():
    for variant in ("pi0", "pi05", "pi0_fast"):
        card = render_model_card(PiConfig(variant=variant), 3_300_000_000, "org/pi", "Converted.")
        assert card.data.license == GEMMA_LICENSE and card.data.base_model == PALIGEMMA
        assert "PaliGemma 3B (SigLIP So400m/14 + Gemma 2B)" in card.text and "Gemma Terms of Use" in card.text
        assert ("300M-parameter action expert" in card.text) == (variant != "pi0_fast")
    given = render_model_card(PiConfig(), 3_300_000_000, "org/pi", "Converted.", license="apache-2.0",
                              base_model="org/pi0-base")
    assert given.data.license == "apache-2.0" and given.data.base_model == "org/pi0-base"


def test_a_model_of_another_size_asserts_no_lineage_and_gives_its_own_sizes():
    card = render_model_card(tiny_config("pi05"), 224_384, "org/tiny", "Trained from scratch.")
    assert card.data.license is None and card.data.base_model is None
    assert "license" not in card.content.split("---")[1] and "base_model" not in card.content.split("---")[1]
    assert "Gemma 2B" not in card.text and "300M" not in card.text and "PaliGemma 3B" not in card.text
    assert "SigLIP: 2 layers of width 32; Gemma: 2 layers of width 64" in card.text
    assert "an action expert (Gemma: 2 layers of width 32)" in card.text and "No license is declared" in card.text
    assert "224,384" in card.text


def test_the_converters_assert_no_license_or_base_model_unless_given():
    parser = push.add_publish_arguments(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert args.license is None and args.base_model is None


def test_the_remote_code_requirements_are_the_projects_own_pins():
    setup = ConfigParser()
    setup.read(ROOT / "setup.cfg")
    pins = {re.split(r"[<>=]", line)[0]: line.strip() for line in setup["options"]["install_requires"].split("\n")
            if line.strip()}
    for requirement in REMOTE_CODE_REQUIREMENTS:
        assert pins[re.split(r"[<>=]", requirement)[0]] == requirement


def test_the_shipped_demo_policys_card_runs_from_the_repository_root(tmp_path):
    card = ModelCard.load(ROOT / "demo_pi" / "model" / "README.md")
    assert card.data.license is None and card.data.base_model is None and "Gemma 2B" not in card.text
    (tmp_path / "demo_pi").mkdir()  # the repository's root as the examples see it, without writing into it
    (tmp_path / "demo_pi" / "model").symlink_to(ROOT / "demo_pi" / "model")
    blocks = _blocks(card.text, "python")
    assert blocks and all("import modeling_pi" in block and '"demo_pi/model"' in block for block in blocks)
    _check_printed(blocks, _run(blocks, tmp_path))
    command = next(block for block in _blocks(card.text, "bash") if "pi generate" in block)
    out = json.loads(_bash(command, tmp_path).stdout.strip().splitlines()[-1])
    assert out["valid"] and len(out["actions"]) == 8


def test_what_the_card_says_transformers_answers_without_the_import_is_what_it_answers(published):
    run_dir, repo_id = published("pi0 without processor")
    quoted = re.search(r'stops with "(.*?)"', _card(run_dir, repo_id).replace("\n", " ")).group(1)
    script = BLOCK_THIS_PROJECT + f"""
from transformers import AutoModel
try:
    AutoModel.from_pretrained({repo_id!r})
except ValueError as err:
    print(err)
"""
    env = {**os.environ, "HF_HOME": str(run_dir / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                            cwd=run_dir, stdin=subprocess.DEVNULL)
    assert quoted in result.stdout, result.stdout + result.stderr[-2000:]


def test_retargeting_a_card_renames_the_model_not_a_camera_of_the_same_name():
    config = tiny_config("pi05", image_keys=["scene", "wrist"], max_token_len=40)
    processor = PiProcessor(PiImageProcessor(size=config.vision_config.image_size), task_tokenizer(), variant="pi05",
                            image_keys=config.image_keys, max_token_len=config.max_token_len)
    card = render_model_card(config, 1, "scene", "Trained.", processor=processor)
    pushed = retarget_card(card.content, "org/scene")
    assert '"scene"' not in pushed.split("## Use")[1].replace('["scene", "wrist"]', "")
    assert '["scene", "wrist"]' in pushed and 'from_pretrained("org/scene"' in pushed


def test_the_card_describes_the_state_and_the_fast_tokenizer_the_folder_has():
    """π0.5 trained without the state in its prompt (openpi's pi05_libero) reads none; a π0-FAST folder without a
    processor has no FAST tokenizer; π0-FAST's actions are FAST tokens at the robot's dims, not padded."""
    config = tiny_config("pi05", max_token_len=40)
    processor = PiProcessor(PiImageProcessor(size=config.vision_config.image_size), task_tokenizer(), variant="pi05",
                            image_keys=config.image_keys, max_token_len=40, discrete_state_input=False)
    text = render_model_card(config, 1, "org/libero", "Converted.", processor=processor).text
    assert "State: {bins}" not in text and "trained without the state in its prompt" in text
    assert "| state | not read (trained without it in the prompt) |" in text and "discretised robot state" not in text
    assert "State: {bins}" in render_model_card(config, 1, "org/droid", "Converted.", processor=processor.replace(
        discrete_state_input=True)).text

    assert "z-score: `(x - mean) / (std + 1e-6)`, then zero-padded" in render_model_card(  # the processor's mode
        config, 1, "org/libero", "Converted.", processor=processor.replace(norm_mode="zscore")).text

    fast = render_model_card(tiny_config("pi0_fast"), 1, "org/fast", "Converted.").text
    assert "ships in `fast_tokenizer/`" not in fast and "This folder has no processor, hence no FAST" in fast
    assert "steps × the robot's dims, as FAST tokens" in fast and "zero-padded" not in fast
