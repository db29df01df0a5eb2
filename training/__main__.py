"""``python -m segdrop.training <recipe> ...`` (also ``accelerate launch -m segdrop.training <recipe> ...``).

Recipes: ``scratch`` (train a small text-to-image model from scratch, see ``train_scratch.py``), ``inpaint``
(widen a text-to-image model into a concat-conditioned inpainting model, ``train_inpaint.py``) and ``removal``
(ObjectDrop counterfactual fine-tuning of an inpainting model, ``train_removal.py``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from . import counterfactual_data, train_inpaint, train_removal, train_scratch
    from .loop import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m segdrop.training", description="SegDrop training recipes")
    sub = parser.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    scratch = sub.add_parser("scratch", help="train a small text-to-image latent-diffusion model from scratch on the toy world")
    train_scratch.build_parser(scratch)
    counterfactual_data.build_parser(sub.add_parser("counterfactual-data", help="build a normalised F/G/M counterfactual-triplet dataset (see counterfactual_data.py)"))
    train_inpaint.build_parser(sub.add_parser("inpaint", help="widen a text-to-image model into an inpainting model (random masks; see train_inpaint.py)"))
    train_removal.build_parser(sub.add_parser("removal", help="ObjectDrop removal: fine-tune an inpainting model on counterfactual triplets (see train_removal.py)"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    setup_logging()
    if args.recipe == "counterfactual-data":
        return counterfactual_data.run(args)
    if args.recipe == "scratch":
        return train_scratch.run(args, argv[1:])
    if args.recipe == "inpaint":
        return train_inpaint.run(args, argv[1:])
    if args.recipe == "removal":
        return train_removal.run(args, argv[1:])
    parser.error(f"unknown recipe {args.recipe}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
