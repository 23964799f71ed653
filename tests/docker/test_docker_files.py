"""The Docker files (docker/, docker-compose.yml, .dockerignore) say what they must.

No Docker engine runs where the tests run, so these check the files themselves: the compose file
parses and wires api, worker (with an NVIDIA GPU) and an optional postgres together on named
volumes; both images run as a non-root user with a HEALTHCHECK; the API image never installs torch
and the worker image installs a CUDA build of it; every CHARRNN_* setting the files set is one the
app reads; the entrypoint scripts are valid bash. When the `docker compose` plugin is installed,
`docker compose config` validates the compose file too (it needs no engine).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.settings import Settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = ROOT / "docker-compose.yml"
API_DOCKERFILE = DOCKER / "api.Dockerfile"
WORKER_DOCKERFILE = DOCKER / "worker.Dockerfile"
ENTRYPOINTS = [DOCKER / "api-entrypoint.sh", DOCKER / "worker-entrypoint.sh"]

# The settings the app reads, from the app's own Settings (env_prefix CHARRNN_): the files may set only these.
APP_SETTINGS = {
    (Settings.model_config.get("env_prefix", "") + name).upper()
    for name, field in Settings.model_fields.items()
    if field.alias is None and field.validation_alias is None
}
# The ones the contract (API.md) names: compose must pass each of them through.
CONTRACT_SETTINGS = {
    "CHARRNN_DATA_DIR",
    "CHARRNN_DATABASE_URL",
    "CHARRNN_BOOTSTRAP_KEY",
    "CHARRNN_MAX_CORPUS_BYTES",
    "CHARRNN_DEVICE",
    "CHARRNN_JOB_LEASE_SECONDS",
}

TEST_ENV = {"CHARRNN_BOOTSTRAP_KEY": "test-bootstrap-key"}

# Compose variable interpolation: $$, $NAME, ${NAME}, ${NAME:-x}, ${NAME-x}, ${NAME:?x}, ${NAME?x},
# ${NAME:+x}, ${NAME+x}.
_INTERP = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<invalid>))"
)


class MissingVariable(Exception):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("invalid") is not None:
            raise ValueError(f"invalid interpolation at {m.string[m.start() : m.start() + 20]!r}")
        name = m.group("named") or m.group("braced")
        op, arg = m.group("op"), m.group("arg") or ""
        val = env.get(name)
        unset_or_empty = not val
        if op in (":-", "-"):
            return arg if (unset_or_empty if op == ":-" else val is None) else val
        if op in (":?", "?"):
            if unset_or_empty if op == ":?" else val is None:
                raise MissingVariable(f"{name}: {arg}")
            return val
        if op in (":+", "+"):
            return arg if not (unset_or_empty if op == ":+" else val is None) else ""
        return val or ""

    return _INTERP.sub(sub, value)


def interpolate_tree(node, env: dict[str, str]):
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose) -> dict:
    return interpolate_tree(raw_compose, TEST_ENV)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    out = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (ins, _) in enumerate(instructions) if ins == "FROM"]
    return instructions[starts[-1] :]


def run_commands(instructions) -> str:
    return "\n".join(args for ins, args in instructions if ins == "RUN")


# --- compose ------------------------------------------------------------------------------------


def test_compose_parses_with_api_and_worker(compose):
    assert {"api", "worker"} <= set(compose["services"])
    api, worker = compose["services"]["api"], compose["services"]["worker"]
    assert api["build"]["dockerfile"] == "docker/api.Dockerfile"
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile"
    for service in (api, worker):
        assert (ROOT / service["build"].get("context", ".") / service["build"]["dockerfile"]).is_file()


def test_every_dollar_in_compose_is_valid_interpolation():
    for lineno, line in enumerate(COMPOSE.read_text().splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        try:
            interpolate(line, TEST_ENV)
        except ValueError as exc:
            pytest.fail(f"docker-compose.yml line {lineno}: {exc}")


def test_api_publishes_8000_with_a_healthcheck(compose):
    api = compose["services"]["api"]
    assert any(str(p).endswith(":8000") for p in api["ports"])
    test = api["healthcheck"]["test"]
    assert "/healthz" in " ".join(test) and "8000" in " ".join(test)


def test_worker_reserves_an_nvidia_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia"
        and "gpu" in d.get("capabilities", [])
        and (d.get("count") or d.get("device_ids"))
        for d in devices
    )


def test_worker_can_scale(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker, "a fixed container_name breaks --scale"
    assert not worker.get("ports"), "a host port on the worker breaks --scale; use expose"
    assert worker["depends_on"]["api"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    env = environment(worker)
    assert env["CHARRNN_WORKER_HOST"] == "0.0.0.0"
    assert env["CHARRNN_WORKER_PORT"] == "8001"
    # Unset by default, so each replica's entrypoint advertises its own address.
    assert env.get("CHARRNN_WORKER_URL", "") == ""
    assert env["CHARRNN_DEVICE"] == "cuda"


def test_postgres_is_optional_behind_a_profile(compose):
    postgres = compose["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for name in ("api", "worker"):
        dep = compose["services"][name]["depends_on"]["postgres"]
        assert dep["required"] is False, f"{name} must start without the postgres profile"
    named = [v.split(":")[0] for v in postgres["volumes"]]
    assert all(v in compose["volumes"] for v in named)


def test_s3_is_optional_behind_a_profile(compose):
    """`--profile s3`: a MinIO service and a one-off that makes the bucket; api and worker wait for the
    bucket only when the profile is on, and read the store's settings the way the AWS tools do."""
    minio, bucket = compose["services"]["minio"], compose["services"]["minio-bucket"]
    assert minio["profiles"] == bucket["profiles"] == ["s3"]
    assert minio["image"].startswith("minio/minio") and "mc" in " ".join(minio["healthcheck"]["test"])
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "local/charrnn" in bucket["entrypoint"]
    assert all(v.split(":")[0] in compose["volumes"] for v in minio["volumes"])
    for name in ("api", "worker"):
        service = compose["services"][name]
        dep = service["depends_on"]["minio-bucket"]
        assert dep["required"] is False and dep["condition"] == "service_completed_successfully", name
        env = environment(service)
        assert env["CHARRNN_STORAGE_URL"] == "", "the data dir by default"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(env)


def test_storage_url_override(raw_compose):
    resolved = interpolate_tree(raw_compose, {**TEST_ENV, "CHARRNN_STORAGE_URL": "s3://charrnn/charrnn"})
    for name in ("api", "worker"):
        assert environment(resolved["services"][name])["CHARRNN_STORAGE_URL"] == "s3://charrnn/charrnn"
    # The MinIO service's credentials are those the services sign with.
    minio_env = environment(resolved["services"]["minio"])
    api_env = environment(resolved["services"]["api"])
    assert minio_env["MINIO_ROOT_USER"] == api_env["AWS_ACCESS_KEY_ID"]
    assert minio_env["MINIO_ROOT_PASSWORD"] == api_env["AWS_SECRET_ACCESS_KEY"]


def test_api_and_worker_share_the_data_volume(compose):
    volumes = compose["volumes"]
    assert "charrnn-data" in volumes
    for name in ("api", "worker"):
        service = compose["services"][name]
        assert "charrnn-data:/data" in service["volumes"], name
        assert environment(service)["CHARRNN_DATA_DIR"] == "/data"
        assert environment(service)["CHARRNN_DATABASE_URL"] == "sqlite:////data/charrnn.db"


def test_compose_sets_only_settings_the_app_reads(compose):
    set_somewhere = set()
    for name, service in compose["services"].items():
        for key in environment(service):
            if key.startswith("CHARRNN_"):
                assert key in APP_SETTINGS, f"{name} sets {key}, which the app does not read"
                set_somewhere.add(key)
    assert set_somewhere >= CONTRACT_SETTINGS
    text = COMPOSE.read_text()
    referenced = set(re.findall(r"\$\{?(CHARRNN_[A-Z0-9_]+)", text))
    assert referenced <= APP_SETTINGS, referenced - APP_SETTINGS


def test_settings_are_read_from_the_app():
    """The list comes from Settings itself (no copy to drift), and the settings the contract names are in it."""
    assert "CHARRNN_DATA_DIR" in APP_SETTINGS and "CHARRNN_TRAIN_THREADS" in APP_SETTINGS
    assert CONTRACT_SETTINGS <= APP_SETTINGS, CONTRACT_SETTINGS - APP_SETTINGS
    assert len(APP_SETTINGS) == len(Settings.model_fields)


def test_bootstrap_key_is_required(raw_compose):
    with pytest.raises(MissingVariable, match="CHARRNN_BOOTSTRAP_KEY"):
        interpolate_tree(raw_compose, {})
    api_env = environment(interpolate_tree(raw_compose, TEST_ENV)["services"]["api"])
    assert api_env["CHARRNN_BOOTSTRAP_KEY"] == "test-bootstrap-key"


def test_postgres_url_override(raw_compose):
    url = "postgresql+psycopg://charrnn:charrnn@postgres:5432/charrnn"
    resolved = interpolate_tree(raw_compose, {**TEST_ENV, "CHARRNN_DATABASE_URL": url})
    for name in ("api", "worker"):
        assert environment(resolved["services"][name])["CHARRNN_DATABASE_URL"] == url


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _compose_config(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), *args, "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(not _docker_compose_available(), reason="the docker compose plugin is not installed")
def test_docker_compose_config_validates():
    env = {**os.environ, **TEST_ENV}
    ok = _compose_config(env)
    assert ok.returncode == 0, ok.stderr
    ok = _compose_config(env, "--profile", "postgres")
    assert ok.returncode == 0, ok.stderr
    ok = _compose_config({**env, "CHARRNN_STORAGE_URL": "s3://charrnn/charrnn"}, "--profile", "s3")
    assert ok.returncode == 0, ok.stderr
    env.pop("CHARRNN_BOOTSTRAP_KEY")
    missing = _compose_config(env)
    assert missing.returncode != 0 and "CHARRNN_BOOTSTRAP_KEY" in missing.stderr


# --- Dockerfiles --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [API_DOCKERFILE, WORKER_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root_with_a_healthcheck(path):
    stage = final_stage(dockerfile_instructions(path))
    users = [args for ins, args in stage if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must end as a non-root USER"
    healthchecks = [args for ins, args in stage if ins == "HEALTHCHECK"]
    assert healthchecks and "/healthz" in healthchecks[-1] and "127.0.0.1" in healthchecks[-1]
    assert "curl" not in healthchecks[-1]
    assert any(ins == "ENTRYPOINT" for ins, _ in stage)
    # Every script it copies in exists.
    for ins, args in stage:
        if ins == "COPY" and "--from" not in args:
            for src in args.split()[:-1]:
                if not src.startswith("--") and "*" not in src:
                    assert (ROOT / src).exists(), f"{path.name} copies missing {src}"


def test_api_image_has_no_torch():
    stage = final_stage(dockerfile_instructions(API_DOCKERFILE))
    assert stage[0][1].startswith("python:3.11-slim")
    runs = run_commands(stage)
    assert "pip install" in runs
    assert "torch" not in runs.replace("find_spec('torch')", ""), "the API image must not install torch"
    assert "[worker]" not in runs and "download.pytorch.org" not in runs
    assert ("EXPOSE", "8000") in stage
    assert "8000" in next(args for ins, args in stage if ins == "HEALTHCHECK")
    entry = (DOCKER / "api-entrypoint.sh").read_text()
    assert "charrnn db upgrade" in entry
    assert "charrnn api --host 0.0.0.0 --port 8000" in entry


def test_worker_image_installs_torch_with_cuda():
    instructions = dockerfile_instructions(WORKER_DOCKERFILE)
    args = {}
    for ins, rest in instructions:
        if ins == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
    base = final_stage(instructions)[0][1]
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
    assert base.startswith("nvidia/cuda:"), base
    runs = run_commands(instructions)
    runs = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), runs).replace('"', "")
    assert "--index-url https://download.pytorch.org/whl/cu" in runs
    assert "torch==2.13.0" in runs
    assert ".[worker]" in runs
    assert runs.index("download.pytorch.org") < runs.index(".[worker]"), "CUDA torch must come first"
    assert "3.11" in runs
    entry = (DOCKER / "worker-entrypoint.sh").read_text()
    assert "exec charrnn worker" in entry
    assert "CHARRNN_WORKER_URL" in entry


@pytest.mark.parametrize("path", [API_DOCKERFILE, WORKER_DOCKERFILE, *ENTRYPOINTS], ids=lambda p: p.name)
def test_docker_files_set_only_settings_the_app_reads(path):
    referenced = set(re.findall(r"\b(CHARRNN_[A-Z0-9_]+)", path.read_text())) - {"CHARRNN_UID"}
    assert referenced <= APP_SETTINGS, referenced - APP_SETTINGS


@pytest.mark.parametrize("path", ENTRYPOINTS, ids=lambda p: p.name)
def test_entrypoint_is_valid_bash(path):
    assert path.read_text().startswith("#!/usr/bin/env bash")
    assert os.access(path, os.X_OK), f"{path.name} must be executable"
    ok = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def _env_with_stub_charrnn(tmp_path: Path, body: str) -> dict:
    """The environment minus CHARRNN_* settings, with a stub `charrnn` (running `body`) first on PATH."""
    stub = tmp_path / "charrnn"
    stub.write_text(f"#!/usr/bin/env bash\n{body}\n")
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")}
    env["PATH"] = f"{tmp_path}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _run_entrypoint(name: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DOCKER / name), *args], env=env, capture_output=True, text=True, timeout=30)


def test_worker_entrypoint_advertises_its_own_address(tmp_path):
    """Run the entrypoint with a stub `charrnn` on PATH: it must fill in CHARRNN_WORKER_URL."""
    env = _env_with_stub_charrnn(tmp_path, 'echo "URL=$CHARRNN_WORKER_URL HOST=$CHARRNN_WORKER_HOST ARGS=$*"')
    out = _run_entrypoint("worker-entrypoint.sh", env)
    assert out.returncode == 0, out.stderr
    assert re.search(r"URL=http://\S+:8001 HOST=0\.0\.0\.0 ARGS=worker$", out.stdout.strip()), out.stdout
    env["CHARRNN_WORKER_URL"] = "http://gpu-box-7:9000"
    out = _run_entrypoint("worker-entrypoint.sh", env)
    assert "URL=http://gpu-box-7:9000 " in out.stdout
    out = _run_entrypoint("worker-entrypoint.sh", env, "echo", "hello")
    assert out.stdout.strip() == "hello"


def test_api_entrypoint_migrates_then_serves(tmp_path):
    env = _env_with_stub_charrnn(tmp_path, 'echo "charrnn $*"')
    env["CHARRNN_DATA_DIR"] = str(tmp_path / "data")
    out = _run_entrypoint("api-entrypoint.sh", env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["charrnn db upgrade", "charrnn api --host 0.0.0.0 --port 8000"]


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "data"} <= patterns
    assert any("__pycache__" in p for p in patterns)
    for needed in ("app", "worker", "alembic", "alembic.ini", "pyproject.toml", "README.md", "docker"):
        assert needed not in patterns, f".dockerignore must not exclude {needed}"
