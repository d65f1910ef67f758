"""The `pi` command: one entry point, one subcommand per job (`pi convert openpi ...`, `pi train ...`)."""

import argparse
import sys

from conversion import convert_openpi


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi", description="π0 / π0.5 in Hugging Face Transformers.")
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")

    convert = jobs.add_parser("convert", help="convert a checkpoint into a Hugging Face folder")
    sources = convert.add_subparsers(dest="source", required=True, metavar="SOURCE")
    summary = "Convert an openpi (JAX, orbax) checkpoint of π0 or π0.5 into a folder AutoModel.from_pretrained loads."
    openpi = sources.add_parser("openpi", help="an openpi (JAX, orbax) checkpoint", description=summary)
    convert_openpi.add_arguments(openpi).set_defaults(run=convert_openpi.run)

    from training_pi import train

    trainer = jobs.add_parser("train", help="fine-tune on a LeRobot v3 dataset", description=train.__doc__.split("\n\n")[0])
    train.add_arguments(trainer).set_defaults(run=train.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
