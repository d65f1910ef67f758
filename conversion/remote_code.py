"""The model's own code inside a published folder, so that it loads where only transformers is installed:
`AutoModel.from_pretrained(folder, trust_remote_code=True)`.

Transformers' remote-code loader copies the module named in `auto_map` and, recursively, every module
it imports relatively (`from .x import y`) from the same folder. Our code lives in three packages that
import each other absolutely (`from configuration_pi import PiConfig`), so the folder gets a flat copy
of their modules with those imports made relative. Where this project is installed and imported, its
registered classes take precedence and nothing from the folder is executed.

Transformers alone does not bring everything the code imports: the processor also needs Pillow
(`REMOTE_CODE_REQUIREMENTS` in `model_cards`, which the card names). In the copies, a Pillow import sits in a
`try` that raises "the π processor needs Pillow: pip install pillow"; inside a `try` it is also left out of
transformers' own import check, which would otherwise stop first and ask for `pip install PIL`, a package
of another name.
"""

import json
import re
from importlib import import_module
from pathlib import Path

# What each Auto class needs, in dependency order; every module name is unique across the packages.
MODULES = {
    "configuration_pi": ("configuration_pi",),
    "modeling_pi": ("input_checks", "flow_matching", "action_expert", "joint_attention", "cpu_linears",
                    "compiled_generation", "fast_decoding", "real_time_chunking", "quantization", "modeling_pi"),
    "processing_pi": ("normalization", "prompts", "image_processing_pi", "fast_action_tokenizer", "robots", "processing_pi"),
}
AUTO_MAP = {
    "config.json": {"AutoConfig": "configuration_pi.PiConfig", "AutoModel": "modeling_pi.PiForActionGeneration"},
    "processor_config.json": {"AutoProcessor": "processing_pi.PiProcessor"},
}
_PACKAGE_IMPORT = re.compile(rf"^(\s*)from ({'|'.join(MODULES)})(?:\.(\w+))? import ", re.MULTILINE)
_PILLOW_IMPORT = re.compile(r"^((?:from PIL(?:\.\w+)* import .+)|(?:import PIL(?:\.\w+)*(?: as \w+)?))$", re.MULTILINE)
PILLOW_MISSING = "the π processor needs Pillow: pip install pillow"


def flat_source(package: str, module: str) -> str:
    """The module's source with imports of our packages turned into imports of sibling files."""
    source = Path(import_module(f"{package}.{module}").__file__).read_text(encoding="utf-8")

    def relative(match: re.Match) -> str:
        indent, imported_package, imported_module = match.groups()
        # `from configuration_pi import X`: the package re-exports X from its namesake module.
        return f"{indent}from .{imported_module or imported_package} import "

    return _guard_pillow(_PACKAGE_IMPORT.sub(relative, source))


def _guard_pillow(source: str) -> str:
    """Each top-level Pillow import wrapped so that a missing Pillow says what to install (module docstring)."""
    return _PILLOW_IMPORT.sub(lambda match: f"try:\n    {match.group(1)}\nexcept ImportError as err:  # transformers does "
                              f"not install Pillow\n    raise ImportError({json.dumps(PILLOW_MISSING, ensure_ascii=False)}) from err", source)


def remote_code_files() -> dict[str, str]:
    """File name -> source of every module the folder needs."""
    return {f"{module}.py": flat_source(package, module) for package, modules in MODULES.items() for module in modules}


def with_auto_map(folder: Path) -> dict[str, str]:
    """File name -> contents of the folder's config (and processor config) pointing `auto_map` at the code."""
    updated = {}
    for name, auto_map in AUTO_MAP.items():
        if (folder / name).is_file():
            settings = json.loads((folder / name).read_text(encoding="utf-8"))
            updated[name] = json.dumps({**settings, "auto_map": auto_map}, indent=2, sort_keys=True) + "\n"
    return updated


def add_remote_code(folder: str | Path) -> None:
    """Writes the code files into `folder` and points `auto_map` at them."""
    folder = Path(folder)
    for name, text in {**remote_code_files(), **with_auto_map(folder)}.items():
        (folder / name).write_text(text, encoding="utf-8")
