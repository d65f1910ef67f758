"""The `pi` command: one entry point, one subcommand per job (`pi convert openpi ...`, `pi export lerobot ...`,
`pi train ...`)."""

import argparse
import sys

from conversion import convert_lerobot, convert_openpi, export_lerobot, push


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi", description="π0 / π0.5 / π0-FAST in Hugging Face Transformers.")
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")

    convert = jobs.add_parser("convert", help="convert a checkpoint into a Hugging Face folder")
    sources = convert.add_subparsers(dest="source", required=True, metavar="SOURCE")
    summary = "Convert an openpi (JAX, orbax) checkpoint of π0, π0.5 or π0-FAST into a folder AutoModel.from_pretrained loads."
    openpi = sources.add_parser("openpi", help="an openpi (JAX, orbax) checkpoint", description=summary)
    convert_openpi.add_arguments(openpi).set_defaults(run=convert_openpi.run)
    for source, help_text in (("lerobot", "a LeRobot π0 / π0.5 / π0-FAST policy folder"),
                              ("transformers-pi0", "a transformers PI0ForConditionalGeneration folder")):
        parser_ = sources.add_parser(source, help=help_text, description=f"Convert {help_text} into a π folder.")
        convert_lerobot.add_arguments(parser_, source).set_defaults(run=convert_lerobot.run)

    export = jobs.add_parser("export", help="write a π folder in another library's format")
    targets = export.add_subparsers(dest="target", required=True, metavar="TARGET")
    lerobot = targets.add_parser("lerobot", help="a LeRobot 0.6 π0 / π0.5 / π0-FAST policy folder",
                                 description=export_lerobot.__doc__.split("\n\n")[0])
    export_lerobot.add_arguments(lerobot).set_defaults(run=export_lerobot.run)

    publish = jobs.add_parser("push", help="publish a π folder on the Hugging Face Hub", description=push.__doc__.split("\n\n")[0])
    push.add_arguments(publish).set_defaults(run=push.run)

    from modeling_pi import robotics_pipeline

    generate = jobs.add_parser("generate", help="one action chunk from images, a prompt and a state",
                               description=robotics_pipeline.__doc__.split("\n\n")[0])
    robotics_pipeline.add_arguments(generate).set_defaults(run=robotics_pipeline.run)

    from demo_pi import demo

    show = jobs.add_parser("demo", help="the shipped policy on the built-in tabletop task",
                           description=demo.__doc__.split("\n\n")[0])
    demo.add_arguments(show).set_defaults(run=demo.run)

    from serving_pi import server

    serve = jobs.add_parser("serve", help="serve a π model to openpi robot clients over websockets",
                            description=server.__doc__.split("\n\n")[0])
    server.add_arguments(serve).set_defaults(run=server.run)

    from training_pi import train

    trainer = jobs.add_parser("train", help="fine-tune on a LeRobot v3 dataset", description=train.__doc__.split("\n\n")[0])
    train.add_arguments(trainer).set_defaults(run=train.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
