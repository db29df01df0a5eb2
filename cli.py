"""``python -m segdrop``: the demo (main job), evaluation of a labelled folder, toy-world data and training,
without ComfyUI."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segdrop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    from .demo import job

    job.add_demo_arguments(commands.add_parser("demo", help="attention capture -> masks and segments on toy-world scenes"))
    job.add_evaluate_arguments(commands.add_parser(
        "evaluate", help="score the methods on a folder of labelled images (metadata.jsonl + PNGs)"))
    commands.add_parser("train", help="training recipes (same as python -m segdrop.training)", add_help=False)
    commands.add_parser("toyworld", help="write a toy-world dataset (same as python -m segdrop.toyworld)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        from .training.__main__ import main as train_main

        return train_main(rest)
    if args.command == "toyworld":
        from .toyworld.__main__ import main as toyworld_main

        return toyworld_main(rest) or 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return job.demo_main(args) if args.command == "demo" else job.evaluate_main(args)
