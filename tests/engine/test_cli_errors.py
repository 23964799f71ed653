"""The command line on the user's own machine: every error is a line or two naming the option or
setting, the bound and the fix, and `generate` writes as many characters as asked."""

import subprocess
import sys

import pytest

from tests.harness import SHAKESPEARE


def charrnn(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """`charrnn ARGS` as a real process (pays a torch import: 2-4 s of CPU on a busy 2-core machine)."""
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def charrnn_here(*args: str) -> subprocess.CompletedProcess:
    """`charrnn ARGS` run in this process (typer's CliRunner), for what needs no process of its own: the
    same command, its exit code, stdout and stderr. A bug's exception would end it with code 1, not 2."""
    from typer.testing import CliRunner

    from worker.cli import cli

    result = CliRunner().invoke(cli, list(args))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def assert_short_error(proc: subprocess.CompletedProcess, *names: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if "error" in line.lower() or line.startswith("charrnn:")]
    assert len(error_lines) <= 2, proc.stderr
    for name in names:
        assert name in proc.stderr
    for noise in ("Traceback", "pydantic.dev", "╭", "validation error for"):
        assert noise not in proc.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    corpus = folder / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:20_000])
    proc = charrnn_here("train", str(corpus), "--out", str(folder / "run"), "--hidden-size", "16", "--num-layers",
                        "1", "--seq-len", "16", "--batch-size", "4", "--max-steps", "4", "--eval-every", "4",
                        "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return folder / "run"


@pytest.mark.parametrize(("args", "names"), [
    (["--temperature", "-1"], ["--temperature", "greater than or equal to 0", "-1"]),
    (["--top-p", "2"], ["--top-p", "less than or equal to 1"]),
    (["--num-samples", "99"], ["--num-samples", "16"]),
    (["--length", "-3"], ["--length", "0 or more"]),
])
def test_generate_names_the_option_and_its_bound(checkpoint, args, names):
    assert_short_error(charrnn_here("generate", str(checkpoint), *args), *names)


def test_generate_writes_as_many_characters_as_asked(checkpoint):
    # A real process, writing to a real pipe.
    proc = charrnn("generate", str(checkpoint), "--length", "12000", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) == 12_000 + 1  # the text and a final newline
    again = charrnn_here("generate", str(checkpoint), "--length", "300", "--seed", "3")
    assert proc.stdout.startswith(again.stdout.rstrip("\n"))  # streamed pieces are the same text


def test_train_names_the_bad_option(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:20_000])
    proc = charrnn_here("train", str(corpus), "--out", str(tmp_path / "run"), "--dropout", "3")
    assert_short_error(proc, "--dropout", "got 3.0", "at most 0.9")


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path):
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("")
    env = {"PATH": "/usr/bin:/bin", "CHARRNN_DATA_DIR": str(not_a_folder), "PYTHONPATH": sys.path[0]}
    for command in (["serve", "--port", "1"], ["db", "upgrade"], ["keys", "list"]):
        proc = charrnn(*command, env={**env}, cwd=tmp_path)
        assert_short_error(proc, "CHARRNN_DATA_DIR", "not a folder")


def test_only_the_users_problems_end_in_one_line_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    import typer
    from pydantic import BaseModel, ValidationError

    import worker.cli
    import worker.engine.training_run
    from app.settings import Settings
    from worker.engine.cli import train
    from worker.engine.errors import CorpusError

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc" * 100)

    def trainer_raising(exc: Exception):
        def build_trainer(*_args, **_kwargs):
            raise exc
        return build_trainer

    # The engine's own refusal: one line, exit 2.
    monkeypatch.setattr(worker.engine.training_run, "build_trainer", trainer_raising(CorpusError("too short")))
    with pytest.raises(typer.Exit) as ended:
        train(corpus, out=tmp_path / "run")
    assert ended.value.exit_code == 2 and "too short" in capsys.readouterr().err
    # A bug's ValueError, and pydantic's (a ValueError too), are not the user's: they propagate, traceback and all.
    monkeypatch.setattr(worker.engine.training_run, "build_trainer", trainer_raising(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        train(corpus, out=tmp_path / "run")

    class Record(BaseModel):
        n: int

    def broken_command():
        Record(n="x")

    monkeypatch.setattr(worker.cli, "cli", broken_command)
    with pytest.raises(ValidationError):
        worker.cli.main()
    # A CHARRNN_* setting's ValidationError is the user's: one line naming it.
    monkeypatch.setattr(worker.cli, "cli", lambda: Settings(max_attempts="many"))
    with pytest.raises(SystemExit) as ended:
        worker.cli.main()
    assert ended.value.code == 2 and "CHARRNN_MAX_ATTEMPTS" in capsys.readouterr().err
