"""Publishing a π folder on the Hugging Face Hub: `pi push FOLDER ORG/NAME [--private]`, and
`pi convert ... --push-to-hub ORG/NAME`.

What is uploaded is decided here, before anything reaches the network (`hub_files`): the weights
(one safetensors file, or the shards of an index), config, model card, processor, tokenizer, FAST
tokenizer and statistics, whatever else the folder holds except hidden files and Trainer
checkpoints (regular files only: a link is followed only into the Hub cache's blob store, any other
link stops the push), and the remote code with its `auto_map` so that the repository also loads where only
transformers is installed. The card's usage examples name the repository. Everything goes up in one
commit through huggingface_hub.
"""

import argparse
import os
import sys
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from conversion.json_files import index_shards, read_json
from conversion.remote_code import remote_code_files, with_auto_map
from model_cards import GEMMA_LICENSE, PALIGEMMA, retarget_card

WEIGHTS_INDEX = "model.safetensors.index.json"
# The Hub client's errors derive from its HTTP library's base (httpx's, in huggingface_hub 1.x), which HfHubHTTPError
# (an answer with an error status) shares with a connection that fails or times out.
CLIENT_ERROR = next((base for base in HfHubHTTPError.__mro__[1:] if base.__name__ == "HTTPError"), OSError)


class PushError(ValueError):
    """The folder cannot be published as asked."""


def _weights(folder: Path) -> list[str]:
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        shards = index_shards(index, PushError)
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise PushError(f"{folder}: the weight index lists shards that are not there: {', '.join(missing)}.")
        return [WEIGHTS_INDEX, *shards]
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise PushError(f"{folder} has no model.safetensors (nor {WEIGHTS_INDEX}).")


def _is_published(relative: Path) -> bool:
    parts = relative.parts
    return not any(part.startswith(".") for part in parts) and not parts[0].startswith("checkpoint-")


def _is_hub_blob(link: Path) -> bool:
    """A link of a Hub cache snapshot, to `<repo cache>/blobs/<hash>` (what `snapshot_download` leaves)."""
    target = link.resolve()
    return target.is_file() and target.parent.name == "blobs" and (target.parent.parent / "snapshots").is_dir()


def _published_files(folder: Path) -> list[Path]:
    """The folder's published files, all regular files inside it or Hub cache links; any other link or special
    file is refused by name, so that nothing from outside the folder is uploaded."""
    files, refused = [], []
    for root, dirs, names in os.walk(folder):  # does not descend into linked folders
        root = Path(root)
        dirs[:] = [name for name in dirs if _is_published((root / name).relative_to(folder))]
        for name in sorted(names) + [name for name in dirs if (root / name).is_symlink()]:
            path = root / name
            if not _is_published(path.relative_to(folder)):
                continue
            if path.is_symlink() and not _is_hub_blob(path) or not path.is_symlink() and not path.is_file():
                refused.append(path.relative_to(folder).as_posix())
            elif path.is_file():
                files.append(path)
    if refused:
        raise PushError(f"{folder} holds links or special files that are not uploaded: {', '.join(sorted(refused))}. "
                        "Replace them with the files themselves.")
    return sorted(files)


def hub_files(folder: str | Path, repo_id: str) -> dict[str, Path | bytes]:
    """Path in the repository -> local file or contents: exactly what `push_to_hub` uploads."""
    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PushError(f"{repo_id!r} is not a Hub repository id: {err}") from err
    if "/" not in repo_id:
        raise PushError(f"{repo_id!r}: give the repository as ORG/NAME.")
    config_path = folder / "config.json"
    if not config_path.is_file() or read_json(config_path, PushError).get("model_type") != "pi":
        raise PushError(f"{folder} is not a π model folder (no config.json with model_type 'pi').")
    if not (folder / "README.md").is_file():
        raise PushError(f"{folder} has no model card (README.md).")
    weights = _weights(folder)

    files: dict[str, Path | bytes] = {path.relative_to(folder).as_posix(): path for path in _published_files(folder)}
    stray = [name for name in files if name.endswith(".safetensors") and "/" not in name and name not in weights]
    if stray:
        raise PushError(f"{folder} holds weight files that its index does not list: {', '.join(stray)}.")
    if "processor_config.json" in files and "tokenizer.json" not in files:
        raise PushError(f"{folder} has a processor_config.json but no tokenizer.json.")
    adapter = files.get("adapter/adapter_config.json")
    base = read_json(adapter, PushError).get("base_model_name_or_path") if adapter else None
    if base and Path(base).is_absolute():  # `pi train --lora` from a local folder: no one else could load it
        files = {name: path for name, path in files.items() if not name.startswith("adapter/")}
        print(f"pi push: note: adapter/ is left out: its base model is the local folder {base}; the folder's model "
              "has the adapters merged in.", file=sys.stderr)
    for name, text in {**remote_code_files(), **with_auto_map(folder)}.items():
        files[name] = text.encode()
    files["README.md"] = retarget_card((folder / "README.md").read_text(encoding="utf-8"), repo_id).encode()
    return files


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                api: HfApi | None = None, commit_message: str | None = None) -> str:
    """Creates the repository (if needed) and uploads `hub_files` in one commit; returns the commit URL."""
    files = hub_files(folder, repo_id)
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(source) if isinstance(source, Path) else source)
                  for name, source in files.items()]
    commit = api.create_commit(repo_id, operations, commit_message=commit_message or f"Upload {Path(folder).name}",
                               repo_type="model")
    return commit.commit_url


def add_publish_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The converters' options for the card's metadata and for publishing what they wrote."""
    known = "(default: none; for weights of PaliGemma 3B's architecture, which all descend from it, {})"
    parser.add_argument("--license", default=None,
                        help="Hub license id of the source weights, for the model card " + known.format(GEMMA_LICENSE))
    parser.add_argument("--base-model", default=None, help="Hub id of the model these weights descend from, for the "
                        "model card " + known.format(PALIGEMMA))
    parser.add_argument("--push-to-hub", metavar="ORG/NAME", help="publish the converted folder to this Hub repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    return parser


def card_options(args: argparse.Namespace) -> dict:
    return {"license": args.license, "base_model": args.base_model, "repo_id": args.push_to_hub}


def publish(args: argparse.Namespace, folder: Path, job: str) -> int:
    """After a conversion: pushes when asked; the exit status."""
    print(f"wrote {folder}")
    if args.push_to_hub:
        try:
            print(f"pushed {push_to_hub(folder, args.push_to_hub, private=args.private)}")
        except (PushError, OSError, CLIENT_ERROR) as err:
            print(f"{job}: error: the folder was written but not pushed: {_reason(err)}", file=sys.stderr)
            return 1
    elif args.private:
        print(f"{job}: warning: --private applies to --push-to-hub, which was not given: nothing was pushed.",
              file=sys.stderr)
    return 0


def _reason(err: Exception) -> str:
    """What to say of a failed push: the Hub's answer, our refusal or a file error as they are; a request that got no
    answer (no connection, a timeout) as such."""
    if isinstance(err, CLIENT_ERROR) and not isinstance(err, HfHubHTTPError):
        return f"cannot reach the Hub ({type(err).__name__}: {err})"
    return str(err)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("folder", help="a π model folder (converted or trained)")
    parser.add_argument("repo_id", metavar="ORG/NAME", help="the Hub repository to create or update")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one or HF_TOKEN)")
    parser.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded, upload nothing")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        if args.dry_run:
            print("\n".join(hub_files(args.folder, args.repo_id)))
            return 0
        print(f"pushed {push_to_hub(args.folder, args.repo_id, private=args.private, token=args.token)}")
    except (PushError, OSError, CLIENT_ERROR) as err:
        print(f"pi push: error: {_reason(err)}", file=sys.stderr)
        return 1
    return 0
