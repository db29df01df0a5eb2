"""CLI: python -m segdrop.toyworld --out DIR --count N --size 64 --seed 0 --split train [--panels K]"""

from __future__ import annotations

import argparse
from pathlib import Path

from .dataset import read_dataset, write_dataset, write_object_pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segdrop.toyworld", description="Write a toy-world dataset.")
    p.add_argument("--out", required=True, type=Path, help="dataset root (created; appended to if it exists)")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    p.add_argument(
        "--panels", type=int, default=0, help="also write this many inspection panels to OUT/panels"
    )
    p.add_argument(
        "--object-pairs",
        action="store_true",
        help="write one-object pairs (scene, one object's mask, the scene without it) for insertion instead",
    )
    args = p.parse_args(argv)
    if args.object_pairs:
        root = write_object_pairs(args.out, args.count, size=args.size, seed=args.seed, split=args.split)
        print(f"wrote {args.split} one-object pairs to {root / 'metadata.jsonl'}")
        return 0
    root = write_dataset(args.out, args.count, size=args.size, seed=args.seed, split=args.split)
    if args.panels:
        from .panel import save_panel
        from .scene import make_scene

        recs = read_dataset(args.out, args.split)[-args.count :][: args.panels]
        for r in recs:
            save_panel(make_scene(r["seed"], args.size), args.out / "panels" / f"{r['id']}.png")
    print(f"wrote {args.count} {args.split} scenes to {root / 'metadata.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
