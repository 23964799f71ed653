"""What the benchmarks share beyond the harness: the corpus argument. The service as real processes, the
throwaway PostgreSQL database and dummy queued jobs come from tests/harness.py, the one harness that tests
and benchmarks both use.

Imported as a sibling module (`python benchmarks/bench_x.py` puts benchmarks/ on the path); it puts the
repository root there too, so `tests.harness` imports without PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness import KEY, Service, client_for, free_port, queue_dummy_jobs, throwaway_database  # noqa: E402

__all__ = [
    "KEY",
    "ROOT",
    "SAMPLE_CORPUS",
    "Service",
    "add_corpus_argument",
    "client_for",
    "free_port",
    "queue_dummy_jobs",
    "throwaway_database",
    "write_results",
]

# tinyshakespeare (public domain, 1.1 MB), shipped in the repository for the quickstart.
SAMPLE_CORPUS = ROOT / "samples" / "tinyshakespeare.txt"


def add_corpus_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus",
        type=Path,
        default=SAMPLE_CORPUS,
        help=f"a UTF-8 text file to train on (default: {SAMPLE_CORPUS.relative_to(ROOT)})",
    )


def write_results(name: str, data) -> Path:
    """The raw figures as benchmarks/out/NAME.json, beside the printed table."""
    out = ROOT / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path
