"""The comparison tables of a bench grid: `clcpmt compare` (this script is kept for the commands in the docs).

python benchmarks/compare.py runs/bench_isic2018_cpu64/results.csv --ceiling supervised+bl48
"""

import sys

from clcpmt.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
