"""python -m llava_plugin.toy --out DIR: write the tiny offline zoo."""
import argparse
import json
import time

from llava_plugin.toy import PARTS, build_zoo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llava_plugin.toy", description=__doc__)
    parser.add_argument("--out", required=True, help="directory to write models/ and data/ into")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random weight and image")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    zoo = build_zoo(args.out, seed=args.seed, parts=[p for p in args.parts.split(",") if p])
    print(json.dumps(zoo.to_json(), indent=2))
    print(f"tiny zoo written to {zoo.root} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
