"""Retrain a shipped model from its provenance and compare the metrics with the shipped ones.

    python benchmarks/reproduce.py judge [--out DIR]

The check that a shipped checkpoint is what its provenance claims. Not part of CI: it takes as
long as the original training (minutes to tens of minutes on a CPU).
"""
import argparse
import sys
from pathlib import Path

from storyteller.core import SHIPPED_DIR, get_profile, read_provenance
from storyteller.recipes import config_of, train_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--out", type=Path, help="where to keep the retrained checkpoint (default: not kept)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="largest absolute metric difference accepted")
    args = parser.parse_args(argv)

    shipped = read_provenance(SHIPPED_DIR / f"{args.name}.safetensors")
    out = args.out / f"{args.name}.safetensors" if args.out else None
    _, again = train_model(args.name, out=out, profile=get_profile("cpu"), config=config_of(shipped))
    print(f"{'metric':28s} {'shipped':>9s} {'retrained':>9s} {'ratio':>7s}")
    worst = 0.0
    for metric, value in shipped["metrics"].items():
        new = again["metrics"][metric]
        worst = max(worst, abs(new - value))
        print(f"{metric:28s} {value:9.4f} {new:9.4f} {new / value if value else float('nan'):7.3f}")
    print(f"wall time: shipped {shipped['wall_time_s']:.0f} s on {shipped['hardware']}; "
          f"retrained {again['wall_time_s']:.0f} s on {again['hardware']}")
    print("reproduced" if worst <= args.tolerance else f"NOT reproduced: largest difference {worst:.4f}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
