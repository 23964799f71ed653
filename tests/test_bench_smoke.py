"""Each reproduce command of the README's Results table has a quick mode in benchmarks/smoke.py (`make
bench-smoke`, which CI runs after `make test`): the scripts the table cites and the ones smoke.py runs are
the same set, and every cited command names a script that exists. The quick modes themselves run in
`make bench-smoke`, not here (a minute of benchmarks is not a unit test)."""

from __future__ import annotations

import re
import sys

from tests.harness import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def results_table() -> list[str]:
    section = re.search(r"^## Results\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert section, "the README has no Results section"
    return [line for line in section.group(1).splitlines() if line.startswith("| ") and "---" not in line][1:]


def cited_scripts() -> set[str]:
    """The benchmark scripts named in the last column of the Results table ("the same" repeats the row above)."""
    cited: set[str] = set()
    for row in results_table():
        command = row.rstrip(" |").rsplit(" | ", 1)[-1]
        cited |= set(re.findall(r"\b(bench_\w+\.py)", command))
        assert re.search(r"bench_\w+\.py", command) or command.strip() == "the same", row
    return cited


def quick_modes() -> dict[str, list[str]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import smoke
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return smoke.QUICK


def test_every_cited_benchmark_has_a_quick_mode_and_no_other():
    cited = cited_scripts()
    assert len(cited) >= 5, cited
    assert set(quick_modes()) == cited, "benchmarks/smoke.py's QUICK and the README's Results table differ"
    for script in cited:
        assert (ROOT / "benchmarks" / script).is_file(), script


def test_ci_runs_the_quick_modes_after_the_tests():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^bench-smoke:.*\n\t.*benchmarks/smoke\.py", makefile, re.M), "no `make bench-smoke`"
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make test") < ci.index("make bench-smoke"), ".ci/run must run `make bench-smoke` after the tests"
