"""``python -m segdrop.training <recipe> ...`` (also ``accelerate launch -m segdrop.training <recipe> ...``).

Recipes: ``scratch`` (train a small text-to-image model from scratch, see ``train_scratch.py``), ``inpaint``
(widen a text-to-image model into a concat-conditioned inpainting model, ``train_inpaint.py``), ``removal``
(ObjectDrop counterfactual fine-tuning of an inpainting model, ``train_removal.py``) and ``background`` (concept
distillation: fine-tune a text-to-image model to paint background from M_pre masks, ``train_background.py``).
``insertion``: ObjectDrop insertion (a widened text-to-image model trained on bootstrap, then real pairs,
``train_insertion.py``).
``segmenter``: a plain segmentation U-Net trained on pseudo masks (concept distillation's last step,
``train_segmenter.py``).
``bootstrap``: ObjectDrop insertion pairs from unpaired images + masks and a removal model (``bootstrap_data.py``).
``prelim-masks``, ``refine-masks``, ``synthesize``: concept-distillation mask folders (``distill_data.py``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from . import (
        bootstrap_data,
        counterfactual_data,
        distill_data,
        train_background,
        train_inpaint,
        train_removal,
        train_scratch,
        train_segmenter,
    )
    from .loop import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m segdrop.training", description="SegDrop training recipes")
    sub = parser.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    scratch = sub.add_parser("scratch", help="train a small text-to-image latent-diffusion model from scratch on the toy world")
    train_scratch.build_parser(scratch)
    counterfactual_data.build_parser(sub.add_parser("counterfactual-data", help="build a normalised F/G/M counterfactual-triplet dataset (see counterfactual_data.py)"))
    train_inpaint.build_parser(sub.add_parser("inpaint", help="widen a text-to-image model into an inpainting model (random masks; see train_inpaint.py)"))
    train_removal.build_parser(sub.add_parser("removal", help="ObjectDrop removal: fine-tune an inpainting model on counterfactual triplets (see train_removal.py)"))
    train_background.build_parser(sub.add_parser("background", help="concept distillation: fine-tune a text-to-image model to paint background (see train_background.py)"))
    train_segmenter.build_parser(sub.add_parser("segmenter", help="concept distillation's last step: a plain U-Net segmenter trained on pseudo masks (see train_segmenter.py)"))
    from . import train_insertion
    train_insertion.build_parser(sub.add_parser("insertion", help="ObjectDrop insertion: widen a text-to-image model and train it on bootstrap / real pairs (see train_insertion.py)"))
    bootstrap_data.build_parser(sub.add_parser("bootstrap", help="ObjectDrop insertion data: bootstrap pairs from images + masks with a removal model (see bootstrap_data.py)"))
    distill_data.register(sub)  # prelim-masks, refine-masks, synthesize (see distill_data.py)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    setup_logging()
    if args.recipe in distill_data.COMMANDS:
        return distill_data.run(args, argv[1:])
    if args.recipe == "bootstrap":
        return bootstrap_data.run(args, argv[1:])
    if args.recipe == "counterfactual-data":
        return counterfactual_data.run(args)
    if args.recipe == "scratch":
        return train_scratch.run(args, argv[1:])
    if args.recipe == "inpaint":
        return train_inpaint.run(args, argv[1:])
    if args.recipe == "removal":
        return train_removal.run(args, argv[1:])
    if args.recipe == "background":
        return train_background.run(args, argv[1:])
    if args.recipe == "insertion":
        return train_insertion.run(args, argv[1:])
    if args.recipe == "segmenter":
        return train_segmenter.run(args, argv[1:])
    parser.error(f"unknown recipe {args.recipe}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
