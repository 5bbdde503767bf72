"""Retrieval over a pool of StoryWorld pictures: the seed chapter's per-image loop against the coordinator's batched,
cached `ImageIndex`, on the same model and queries.

    pip install -e ".[dev]"
    python benchmarks/retrieval.py [--pool 2000] [--queries 100] [--repeats 2] [--baseline-queries 2]
                                   [--config FILE --model NAME]

The pool is the first `--pool` pictures of StoryWorld's test split; the queries are the captions of the first
`--queries` of them, each asked `--repeats` times. The baseline embeds every pool image alone for every query and is
timed on `--baseline-queries` queries; the indexed side starts from an empty cache, and its time per query includes
building the index. Both must return the same top hit. Prints seconds per query and the ratio (target >= 50x).
The model is mini-CLIP from the offline config unless `--config`/`--model` name another with embeddings.
Not part of CI.
"""
import argparse

import torch

from storyteller.core import to_pil
from storyteller.integration.config import OFFLINE_CONFIG
from storyteller.integration.manager import ModelManager, retrieval_speedup
from storyteller.world.data import StoryWorldDataset
from storyteller.world.text import caption


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline-queries", type=int, default=2)
    parser.add_argument("--config", default=None, help="a model config (JSON or YAML); default: the offline config")
    parser.add_argument("--model", default="miniclip")
    args = parser.parse_args(argv)
    if args.queries > args.pool:
        parser.error("--queries cannot exceed --pool: each query is the caption of a pool picture")

    manager = ModelManager.from_config(args.config or OFFLINE_CONFIG)
    data = StoryWorldDataset("test", n=args.pool)
    pool = [to_pil(data[i]["image"]) for i in range(args.pool)]
    queries = [caption(data.scene(i)) for i in range(args.queries)] * args.repeats
    result = retrieval_speedup(args.model, manager, pool, queries, args.baseline_queries)
    top1 = sum(hit == i % args.queries for i, hit in enumerate(result["hits"])) / len(queries)
    print(f"model {args.model!r}, pool {args.pool:,} pictures, {len(queries)} queries, {torch.get_num_threads()} threads")
    print(f"{'per-image loop (seed)':<44}{result['baseline s/query']:>12.3f} s/query")
    print(f"{'ImageIndex, index building included':<44}{result['indexed s/query'] * 1e3:>12.2f} ms/query"
          f"   ratio {result['speedup']:,.0f}x")
    print(f"{'ImageIndex, steady state':<44}{result['steady s/query'] * 1e3:>12.4f} ms/query"
          f"   ratio {result['baseline s/query'] / result['steady s/query']:,.0f}x")
    print(f"top-1 is the query's own picture for {top1:.1%} of the queries")
    return 0 if result["speedup"] >= 50 else 1


if __name__ == "__main__":
    raise SystemExit(main())
