"""The README runs: its quickstart (the curl lines, the httpie lines, the CLI lines), the OpenAI snippet
and the `charrnn train` example, read from README.md and run as a user would against a real `charrnn
serve`, with a short budget instead of the README's two minutes. Each example output the README shows
(`# -> {...}` shapes, the "chose ..." lines, the reference losses of tinyshakespeare, an error line)
is checked against what the program prints, so the README cannot drift from the program unnoticed.

What a user types by hand is filled in from what came before: KEY (the test's key), CORPUS, JOB and
ckpt_... (the ids the previous commands printed), the port. Commands run in a folder of their own, where
`samples/` is the repository's and `.venv/bin/charrnn` is this Python's `charrnn`.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import KEY, ROOT, Serve

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text(encoding="utf-8")
SECONDS = 4  # each job's budget here, for the README's 120
# httpie and charrnn as this Python has them, whatever folder its scripts are in.
PRELUDE = f'http() {{ "{sys.executable}" -m httpie "$@"; }}\n'
state: dict = {"ids": {}}


def section(title: str) -> str:
    """The README's `## title` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"the README has no '## {title}' section"
    return match.group(1)


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def commands(block: str) -> list[tuple[str, str | None]]:
    """Each command of a shell block (continuation lines joined) with the output shown after it in a
    `# -> ...` comment, if any; other comments are left out."""
    out: list[tuple[str, str | None]] = []
    pending = ""
    for line in block.splitlines():
        stripped = line.strip()
        shown = re.match(r"#\s*-> (.*)", stripped)
        if shown:
            out[-1] = (out[-1][0], shown.group(1))
            continue
        if not stripped or stripped.startswith("#"):
            continue
        line = re.sub(r"\s+#\s.*$", "", line) if not pending else line  # a trailing comment
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(((pending + line).strip(), None))
        pending = ""
    return out


def short_budget(text: str) -> str:
    """The README's two-minute budgets cut to SECONDS: JSON, httpie, Python keyword and CLI spellings."""
    return re.sub(r"(max_seconds\W{0,5}|--max-seconds )120\b", rf"\g<1>{SECONDS}", text)


def for_this_server(text: str, url: str) -> str:
    port = url.rsplit(":", 1)[1]
    text = text.replace("http://127.0.0.1:8000", url).replace(" :8000/", f" :{port}/")
    return short_budget(text)


def remember_ids(value) -> None:
    """The ids in an answer, by prefix (corpus_, job_, ckpt_): the first of a list, the newest."""
    if isinstance(value, dict):
        if isinstance(value.get("id"), str) and "_" in value["id"]:
            state["ids"].setdefault("seen", set())
            prefix = value["id"].split("_", 1)[0]
            if prefix not in state["ids"] or value["id"] not in state["ids"]["seen"]:
                state["ids"][prefix] = value["id"]
                state["ids"]["seen"].add(value["id"])
        for v in value.values():
            remember_ids(v)
    elif isinstance(value, list) and value:
        remember_ids(value[0])


def parse_json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def assert_shape(shown: str, answer) -> None:
    """`{"id": "corpus_...", "num_chars": 1115394, ...}` as the README shows it: each key is in the answer,
    a string ending in `...` starts the same, any other value is equal."""
    assert isinstance(answer, dict), (shown, answer)
    pairs = re.findall(r'"(\w+)":\s*("[^"]*"|[^,}]+)', shown)
    assert pairs, f"no key in the README's example output {shown!r}"
    for key, value in pairs:
        assert key in answer, f"README shows {key!r} in {shown}; the program answered {answer}"
        value = value.strip()
        if value.startswith('"') and value.endswith('..."'):
            assert str(answer[key]).startswith(value[1:-4]), (key, value, answer[key])
        elif value not in ("..", "..."):
            assert answer[key] == json.loads(value), f"README shows {key}: {value}; the program: {answer[key]}"


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    serve = Serve(tmp_path_factory.mktemp("readme") / "data", max_corpus_bytes=2_000_000)
    serve.start()
    yield serve
    serve.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The user's checkout as the README's commands see it: samples/ and .venv/bin/charrnn."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "samples").symlink_to(ROOT / "samples")
    charrnn = folder / ".venv" / "bin" / "charrnn"
    charrnn.parent.mkdir(parents=True)
    charrnn.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m worker.cli "$@"\n')
    charrnn.chmod(0o755)
    # httpie reads a request body from stdin when stdin is not a terminal, as here: as typed in a terminal.
    (folder / "httpie").mkdir()
    (folder / "httpie" / "config.json").write_text(json.dumps({"default_options": ["--ignore-stdin"]}))
    return folder


def bash(command: str, env: dict, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-c", PRELUDE + command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    printed = result.stdout[-2000:] + result.stderr[-2000:]
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{printed}"
    return result


def run_block(block: str, serve: Serve, workdir: Path, env: dict) -> list[tuple[str, str]]:
    """Runs each command of a README shell block; the commands and what they printed."""
    ran = []
    for command, shown in commands(for_this_server(block, serve.url)):
        assignment = re.fullmatch(r"(?:export )?(\w+)=(.+)", command)
        if assignment:  # a variable the user sets: typed from an earlier answer, or evaluated
            name, value = assignment.groups()
            if value == "crn_...":  # the key `make serve` printed: this test's
                assert env["KEY"].startswith("crn_")
            elif value.endswith("_..."):
                prefix = value[:-4]
                assert prefix in state["ids"], f"{command}: no {prefix}_ id was printed before it"
                env[name] = state["ids"][prefix]
            else:
                env[name] = bash(f'printf %s {value}', env, workdir).stdout
            continue
        for prefix in ("ckpt", "corpus", "job"):
            command = command.replace(f"{prefix}_...", state["ids"].get(prefix, f"{prefix}_..."))
        result = bash(command, env, workdir)
        answer = parse_json(result.stdout)
        if isinstance(answer, dict):
            assert "detail" not in answer and not answer.get("error"), f"{command}\n{result.stdout}"
        remember_ids(answer)
        if shown:
            assert_shape(shown, answer)
        ran.append((command, result.stdout))
    return ran


@pytest.fixture(scope="module")
def env(serve, workdir) -> dict:
    kept = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")}
    return {**kept, "KEY": KEY, "HTTPIE_CONFIG_DIR": str(workdir / "httpie")}


def test_the_quickstart_runs_with_curl_as_written(serve, workdir, env):
    blocks = fenced(section("Quickstart"), "sh")
    assert len(blocks) == 2, "the quickstart has a curl block and an httpie block"
    ran = run_block(blocks[0], serve, workdir, env)
    events = next(out for command, out in ran if "/events" in command)
    assert "event: status" in events and '"succeeded"' in events, events[-2000:]
    generated = next(out for command, out in ran if command.endswith("--length 200"))
    assert len(generated) >= 200, generated
    answer = next(json.loads(out) for command, out in ran if "/generate" in command)
    assert len(answer["text"]) == 300 and answer["checkpoint_id"].startswith("ckpt_"), answer  # "length": 300
    assert (workdir / "model.safetensors").stat().st_size > 0
    state["job"] = env["JOB"]


def test_the_quickstart_runs_with_httpie_as_written(serve, workdir, env):
    block = fenced(section("Quickstart"), "sh")[1]
    ran = run_block(block, serve, workdir, env)
    assert [c.split()[0] for c, _ in ran] == ["http"] * 4
    upload, job, events, generated = (out for _, out in ran)
    assert json.loads(upload)["id"].startswith("corpus_")
    assert json.loads(job)["status"] == "queued"
    assert "event: status" in events and "succeeded" in events, events[-2000:]
    assert json.loads(generated)["text"]


def test_the_openai_snippet_runs_as_written(serve, workdir):
    code = fenced(section("Use it from the OpenAI client"), "python")[0]
    code = for_this_server(code, serve.url).replace('api_key="crn_..."', f'api_key="{KEY}"')
    wait = re.compile(
        r'^job = (client\.fine_tuning\.jobs\.retrieve\(job\.id\))\s+# \.\.\. until job\.status == "(\w+)"$', re.M
    )
    assert wait.search(code), "the snippet's 'retrieve ... until job.status == ...' line changed: update this test"
    code = wait.sub(
        lambda m: "import time\nfor _ in range(600):\n"
        f"    job = {m.group(1)}\n    if job.status in ('{m.group(2)}', 'failed', 'cancelled'):\n        break\n"
        "    time.sleep(0.5)\nassert job.status == 'succeeded', job",
        code,
    )
    assert f'"max_seconds": {SECONDS}' in code, "the snippet's time budget changed: update this test"
    # What the snippet ends with, said once more in a line this test can read.
    code += '\nimport json\nprint("@@" + json.dumps({"events": len(client.fine_tuning.jobs.list_events(job.id).data), '
    code += '"model": job.fine_tuned_model, "finish": out.choices[0].finish_reason}))\n'
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    printed, _, last = result.stdout.rpartition("@@")
    summary = json.loads(last)
    assert re.fullmatch(r"ft:charrnn-lstm:[^:]+:bard:job_\w+", summary["model"]), summary
    assert summary["finish"] in ("stop", "length") and summary["events"] >= 1, summary
    assert printed.strip(), "the snippet printed neither events nor text"


def chose_pattern(line: str) -> re.Pattern:
    """A README "chose ..." line with its numbers (which depend on the machine) left open."""
    parts = re.split(r"\d[\d,.]*M?", line)
    return re.compile(r"[\d,.]+M?".join(re.escape(p) for p in parts).replace(r"\ ", r"\s+"))


def test_the_readmes_chose_lines_follow_todays_sizing_rule():
    """The numbers of the README's example are ones today's rules give (autoconfig.py): the parameter count of
    the size, the characters per parameter (at least CHARS_PER_PARAMETER), the epochs, and the dropout for them."""
    from worker.engine import autoconfig
    from worker.engine.config import num_parameters

    text = fenced(section("Command line"), "text")[0]
    size = re.search(r"chose hidden_size (\d+): the budget trains on about ([\d.]+)M characters, ([\d.]+) per "
                     r"parameter \(([\d,]+) parameters\)", text)
    drop = re.search(r"chose dropout ([\d.]+): it reads the ([\d.]+)M training characters about ([\d.]+) times", text)
    assert size and drop, text
    hidden, chars, per, params = int(size[1]), float(size[2]) * 1e6, float(size[3]), int(size[4].replace(",", ""))
    vocab = len(set((ROOT / "samples" / "tinyshakespeare.txt").read_text(encoding="utf-8")))
    assert params == num_parameters(vocab, "lstm", hidden, 2, 64)
    assert per >= autoconfig.CHARS_PER_PARAMETER, f"{per} per parameter is below today's rule"
    assert abs(chars / params - per) <= 0.05 / params * 1e6 + 0.05, (chars, params, per)
    dropout, train, epochs = float(drop[1]), float(drop[2]) * 1e6, float(drop[3])
    assert abs(chars / train - epochs) <= 0.1, (chars, train, epochs)
    doublings = max(0.0, math.log2(epochs / autoconfig.DROPOUT_FREE_EPOCHS))
    rule = min(autoconfig.MAX_DROPOUT, round(autoconfig.DROPOUT_PER_DOUBLING * doublings / 0.05) * 0.05)
    assert dropout == pytest.approx(rule), (dropout, epochs)


def test_charrnn_train_says_what_it_chose_in_the_words_the_readme_shows(workdir):
    text = fenced(section("Command line"), "text")[0]
    command, *shown = text.strip().splitlines()
    assert command.startswith("$ .venv/bin/charrnn train samples/tinyshakespeare.txt"), command
    assert shown and all(line.startswith("chose ") for line in shown), shown
    result = subprocess.run(
        ["bash", "-c", short_budget(command[2:]) + " --eval-every 20"], cwd=workdir, capture_output=True, text=True,
        timeout=300, env={**os.environ, "CHARRNN_TRAIN_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = " ".join(result.stderr.split())  # as one line: the progress display wraps long lines
    for line in shown:
        assert chose_pattern(line).search(printed), (
            f"the README shows\n  {line}\nbut charrnn train printed:\n" + result.stderr[:3000]
        )
    # The last line on stdout is the one JSON object the command table lists the fields of.
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    row = next(line for line in section("Command line").splitlines() if line.startswith("| `charrnn train FILE"))
    for field in re.findall(r"`(\w+)`", row.split("one JSON line on stdout with", 1)[1]):
        assert field in summary, f"the README lists {field!r} in charrnn train's JSON line: {sorted(summary)}"
    state["run"] = workdir / "run"


def test_the_readmes_other_example_outputs_match_the_program(serve, workdir, env):
    # The reference losses of tinyshakespeare, as "Is my loss good?" gives them.
    with serve.client() as client:
        corpus = client.get(f"/corpora/{state['ids']['corpus']}").json()
        refs = corpus["reference_losses"]
        shown = re.search(r"on tinyshakespeare they are ([\d.]+) and\s+([\d.]+) nats \(([\d.]+) and ([\d.]+) bits\)",
                          README)
        assert shown, "the README no longer gives tinyshakespeare's reference losses"
        unigram, bigram, unigram_bits, bigram_bits = shown.groups()
        assert f"{refs['unigram']:.3f}" == unigram and f"{refs['bigram']:.3f}" == bigram, refs
        assert f"{refs['unigram'] / math.log(2):.2f}" == unigram_bits, refs
        assert f"{refs['bigram'] / math.log(2):.2f}" == bigram_bits, refs

        # An unknown field, named with the closest known one.
        example = re.search(r"\(``(training\.max_second: unknown field.*?)``\)", README, re.S)
        assert example, "the README no longer shows the unknown-field example"
        answer = client.post("/jobs", json={"corpus_id": corpus["id"], "training": {"max_second": 5}})
        assert answer.status_code == 422
        assert " ".join(example.group(1).split()) == answer.json()["message"], answer.text

    # A bad option: one line naming it and its bound.
    line = re.search(r"\(`(error: --temperature: got -1\.0; it must be\s+greater than or equal to 0)`", README)
    assert line, "the README no longer shows the bad-option example"
    result = bash(".venv/bin/charrnn generate model.safetensors --temperature -1 || true", env, workdir)
    assert " ".join(line.group(1).split()) in result.stderr.splitlines(), result.stderr

    # charrnn score: {"loss": .., "chars": ..}
    shown = re.search(r"\| `charrnn score CHECKPOINT FILE` \| `(\{.*?\})`", README)
    assert shown, "the README no longer shows what charrnn score prints"
    (workdir / "text.txt").write_text("To be, or not to be, that is the question.\n")
    printed = json.loads(bash(".venv/bin/charrnn score model.safetensors text.txt", env, workdir).stdout)
    assert_shape(shown.group(1), printed)
    assert set(printed) == set(re.findall(r'"(\w+)"', shown.group(1))), printed
