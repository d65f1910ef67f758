"""The `pi` command: one entry point, one subcommand per job (`pi convert openpi ...`, `pi export lerobot ...`,
`pi train ...`, `pi info FOLDER`).

The jobs' modules import torch and transformers, which take seconds; building the parser imports none of them. Each
job's parser is filled in (`add_arguments`) only when that job is parsed, so `pi --help` and `pi convert --help`
answer at once, and `pi generate ...` imports only what generating needs. Every job's `--help` shows the defaults,
and an option's value may be a negative number or a list of numbers (`--state -0.5,0.2`).
"""

import argparse
import importlib
import re
import sys
from collections.abc import Callable

# What argparse takes for a value rather than an option: a number, or comma-separated numbers (its own matcher
# knows only single numbers such as "-1" or "-.5").
NEGATIVE_NUMBERS = re.compile(r"^-\.?\d[\d.eE+\-,\s]*$")


def shows_default(action: argparse.Action) -> bool:
    """An option with a default worth printing (not None, False or empty)."""
    default = action.default
    empty = default is None or default is False or default is argparse.SUPPRESS or default == []
    return bool(action.option_strings) and not empty


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to an option's help unless the help already speaks of its default or there is none
    to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not shows_default(action) or "default" in text:
            return text
        return super()._get_help_string(action)


class JobParser(argparse.ArgumentParser):
    """A parser whose arguments are added by `load` the first time it parses or prints its help."""

    def __init__(self, *args, load: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        kwargs.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBERS  # argparse reads this attribute to tell values from options
        self._load = load

    def _loaded(self) -> None:
        if self._load is None:
            return
        load, self._load = self._load, None
        load(self)
        for action in self._actions:  # argparse prints no help line, so no default, for an option without help
            if action.help is None and shows_default(action):
                action.help = "default: %(default)s"

    def parse_known_args(self, args=None, namespace=None):
        self._loaded()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._loaded()
        return super().format_help()


def job(module: str, *extra, description: str | None = None) -> Callable[[argparse.ArgumentParser], None]:
    """The loader of a job: imports `module`, adds its arguments and its `run`; the description defaults to the
    first paragraph of the module's docstring."""

    def load(parser: argparse.ArgumentParser) -> None:
        code = importlib.import_module(module)
        code.add_arguments(parser, *extra).set_defaults(run=code.run)
        parser.description = parser.description or description or code.__doc__.split("\n\n")[0]

    return load


OPENPI_SUMMARY = "Convert an openpi (JAX, orbax) checkpoint of π0, π0.5 or π0-FAST into a folder AutoModel.from_pretrained loads."
SOURCES = {
    "openpi": ("an openpi (JAX, orbax) checkpoint", job("conversion.convert_openpi", description=OPENPI_SUMMARY)),
    "lerobot": ("a LeRobot π0 / π0.5 / π0-FAST policy folder", job("conversion.convert_lerobot", "lerobot")),
    "transformers-pi0": ("a transformers PI0ForConditionalGeneration folder",
                         job("conversion.convert_lerobot", "transformers-pi0")),
    "transformers-pi05": ("a transformers PI05ForConditionalGeneration folder",
                          job("conversion.convert_lerobot", "transformers-pi05")),
}
TARGETS = {"lerobot": ("a LeRobot 0.6 π0 / π0.5 / π0-FAST policy folder", job("conversion.export_lerobot"))}
JOBS = {
    "info": ("what a π folder expects and returns: cameras, prompt, state and action dims, statistics",
             job("conversion.info")),
    "push": ("publish a π folder on the Hugging Face Hub", job("conversion.push")),
    "generate": ("one action chunk from images, a prompt and a state", job("serving_pi.generate")),
    "demo": ("the shipped policy on the built-in tabletop task", job("demo_pi.demo")),
    "serve": ("serve a π model to openpi robot clients over websockets", job("serving_pi.server")),
    "train": ("fine-tune on a LeRobot v3 dataset", job("training_pi.train")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = JobParser(prog="pi", description="π0 / π0.5 / π0-FAST in Hugging Face Transformers.")
    parser.job_parsers = {}  # (job, source or target) -> its parser, which reports what it does not know
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    convert = jobs.add_parser("convert", help="convert a checkpoint into a Hugging Face folder")
    sources = convert.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, (help_text, load) in SOURCES.items():
        description = None if name == "openpi" else f"Convert {help_text} into a π folder."
        parser.job_parsers["convert", name] = sources.add_parser(name, help=help_text, description=description, load=load)
    export = jobs.add_parser("export", help="write a π folder in another library's format")
    targets = export.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name, (help_text, load) in TARGETS.items():
        parser.job_parsers["export", name] = targets.add_parser(name, help=help_text, load=load)
    for name, (help_text, load) in JOBS.items():
        parser.job_parsers[name,] = jobs.add_parser(name, help=help_text, load=load)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said with the job's own usage, where the flag and how many values it takes are shown
        job = tuple(value for value in (args.job, getattr(args, "source", None), getattr(args, "target", None)) if value)
        parser.job_parsers.get(job, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
