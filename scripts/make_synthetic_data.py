"""Write the synthetic audio-video world of issue 5 as mp4 files with sound + metadata.csv.

    python scripts/make_synthetic_data.py --out data/synthetic --num-clips 2000 --seed 0

Deterministic for a seed and resumable: rerunning skips the clips already written.
"""

from __future__ import annotations

import argparse

from mmdisco.data.synthetic import generate_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-clips", type=int, required=True, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.num_clips < 1:
        parser.error("--num-clips must be >= 1")
    csv_path = generate_dataset(args.out, args.num_clips, args.seed, progress=not args.no_progress)
    print(f"{args.num_clips} clips (seed {args.seed}) in {args.out}; metadata: {csv_path}")


if __name__ == "__main__":
    main()
