"""Write the embedded demo sample (first 1,000 cifar10-jpeg test images) into the package."""

import argparse
from pathlib import Path

from dyve.data.sample import build_sample, sample_path

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--source", default=None, help="raw data folder (default: dyve's source search)")
ap.add_argument("--out", type=Path, default=sample_path())
args = ap.parse_args()
build_sample(args.source, args.out)
print(f"wrote {args.out}")
