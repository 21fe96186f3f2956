"""Command line entry point of the benchmarks (see :mod:`tuckerflow.bench`)."""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys

from . import BENCHMARKS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuckerflow.bench", description=__doc__)
    parser.add_argument("name", choices=(*BENCHMARKS, "all"))
    parser.add_argument("--out", default="bench-results", help="folder for the JSON results")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument(
        "--backend", default="numpy", help="TensorLy backend (numpy, pytorch, cupy)"
    )
    parser.add_argument("--device", default=None, help="device for pytorch (cpu, cuda)")
    args, rest = parser.parse_known_args(argv)
    names = BENCHMARKS if args.name == "all" else (args.name,)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        mod = importlib.import_module(f"{__package__}.{name}")
        sub = argparse.ArgumentParser(prog=f"python -m tuckerflow.bench {name}")
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(sub)
        sub_args = sub.parse_args(rest if args.name != "all" else [])
        for k, v in vars(args).items():
            setattr(sub_args, k, v)
        result = mod.run(sub_args)
        path = out / f"{name}.json"
        path.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
