"""Seed-paired differences of two rows of a bench results.csv: `clcpmt compare RESULTS --pair A B` (this script is
kept for the commands in the docs; its default metric is standard/auc).

    python benchmarks/paired.py runs/bench_synthetic_multilabel/results.csv clcp_mt+bal0.5 mean_teacher+bal0.5 \
        --metric standard/auc auc/spot
"""

import sys

from clcpmt.cli import main

if __name__ == "__main__":
    results, a, b, *rest = sys.argv[1:] if len(sys.argv) > 3 else sys.exit(__doc__)
    metric = [] if "--metric" in rest else ["--metric", "standard/auc"]
    sys.exit(main(["compare", results, "--pair", a, b, *metric, *rest]))
