"""The code's layering, read from its imports: no package imports another that imports it back, and the
model's modules import neither the processor nor the pipeline (only `modeling_pi/__init__.py` does, to
register the family with the Auto classes and `pipeline`)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("configuration_pi", "modeling_pi", "processing_pi", "pipelines_pi", "conversion", "model_cards",
            "training_pi", "serving_pi", "demo_pi", "benchmarks", "pi_cli")


def imported_packages(path: Path) -> set[str]:
    """Our top-level packages that `path` imports, anywhere in the file (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(PACKAGES)
    return found


def sources(package: str) -> list[Path]:
    return [ROOT / "pi_cli.py"] if package == "pi_cli" else sorted((ROOT / package).rglob("*.py"))


def test_no_two_packages_import_each_other_even_through_others():
    graph = {package: set().union(*(imported_packages(path) for path in sources(package))) - {package} for package in PACKAGES}
    for start in PACKAGES:
        seen, todo = set(), list(graph[start])
        while todo:
            package = todo.pop()
            assert package != start, f"{start} imports itself back through {sorted(seen)}"
            if package not in seen:
                seen.add(package)
                todo += graph[package]


def test_the_models_modules_import_neither_processor_nor_pipeline():
    for path in sources("modeling_pi"):
        if path.name != "__init__.py":
            assert not imported_packages(path) & {"processing_pi", "pipelines_pi", "serving_pi", "training_pi"}, path.name
