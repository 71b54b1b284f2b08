"""Seed-paired differences of two rows of a bench results.csv: `clcpmt compare RESULTS --pair A B` (this script is
kept for the commands in the docs; its default metric is standard/auc).

    python benchmarks/paired.py runs/bench_synthetic_multilabel/results.csv clcp_mt+bal0.5 mean_teacher+bal0.5 \
        --metric standard/auc auc/spot
"""

import sys

from clcpmt.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    results, a, b, *rest = sys.argv[1:]
    metric = [] if "--metric" in rest else ["--metric", "standard/auc"]
    sys.exit(main(["compare", results, "--pair", a, b, *metric, *rest]))
