"""`python -m minifold.bench [generator] [folding] [models] [--quick] [--threads N]`.

Writes outputs/bench/<name>.json and <name>.md (and prints the tables).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from minifold import project_root

NAMES = ("generator", "folding", "models", "launches", "gpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"any of {', '.join(NAMES)} (default: all but gpu)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the scripts run")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--out", default=str(Path(project_root()) / "outputs" / "bench"))
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in NAMES]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(NAMES)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # gpu needs CUDA: run it by name
    for name in args.names or [n for n in NAMES if n != "gpu"]:
        module = importlib.import_module(f"minifold.bench.{name}")
        started = time.perf_counter()
        results = module.run(quick=args.quick)
        results["_meta"] = {
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "quick": args.quick,
            "seconds": round(time.perf_counter() - started, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        (out / f"{name}.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
        table = module.markdown(results)
        header = (
            f"# {name} benchmark\n\ntorch threads {torch.get_num_threads()}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}{', QUICK' if args.quick else ''}\n\n"
        )
        (out / f"{name}.md").write_text(header + table + "\n")
        print(header + table)


if __name__ == "__main__":
    main()
