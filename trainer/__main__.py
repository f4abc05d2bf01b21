"""`python -m trainer RUN_DIR`: train, evaluate and save in RUN_DIR (see trainer.run).

Exit status: 0 succeeded, 1 failed, 2 bad config or data (nothing trained), 3 cancelled.
result.json says what happened in every case.
"""

import argparse
import logging
import sys

from .run import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="folder with config.json and train.jsonl (eval.jsonl optional)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(args.run_dir)
    if result["status"] == "succeeded":
        print(f"succeeded: accuracy {result['metrics']['accuracy']:.3f}, macro-F1 {result['metrics']['macro_f1']:.3f}")
        return EXIT_OK
    print(f"{result['status']}: {result.get('error')}", file=sys.stderr)
    if result["status"] == "cancelled":
        return EXIT_CANCELLED
    return EXIT_BAD_INPUT if result.get("bad_input") else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
