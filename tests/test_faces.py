"""Every face of a setting shows every setting, as its one definition says.

The definitions: the model's and the run's settings (worker/engine/config.py, through settings.py), the
sampling parameters (worker/engine/sampling_params.py) and the service's settings (app/settings.py). The
faces: the native request schemas, /v1's schemas and its `charrnn` extension, GET /jobs/defaults, the
command line's options, the README's tables and lists, and the dashboard's forms. A face may leave a
setting out only by naming it in LEFT_OUT below, with the reason.

`python -m tests.test_faces` prints the README's settings table as the definition writes it.
"""

from __future__ import annotations

import re

import pytest
from typer.main import get_command

from app.jobs.defaults import form_fields
from app.jobs.routes import job_defaults
from app.jobs.schemas import ModelSpec, TrainingSpec
from app.openai import schemas as v1
from app.settings import Settings
from tests.harness import ROOT
from worker.cli import cli
from worker.engine.autoconfig import AUTO_MODEL_FIELDS
from worker.engine.config import ModelConfig, TrainConfig
from worker.engine.sampling_params import SamplingParams
from worker.engine.settings import Setting, field_bounds, settings_of

MODEL, TRAINING = settings_of(ModelConfig), settings_of(TrainConfig)
SAMPLING = tuple(SamplingParams.model_fields)
README = (ROOT / "README.md").read_text()
STATIC = ROOT / "app" / "dashboard" / "static"

# face -> {setting: why that face leaves it out}. The only place a face may leave a setting out.
LEFT_OUT = {
    "jobs": {  # POST /jobs's `training`, /v1's `charrnn.training`, GET /jobs/defaults, the new-job form
        "device": "the worker that claims a job decides it (CHARRNN_DEVICE), not the job",
        "precision": "the worker's hardware decides it (auto: bf16 where the hardware has it)",
    },
    "playground": {  # the dashboard's generation form
        "num_samples": "the playground streams one text at a time",
        "stop": "the playground streams until the length or Stop; stop strings are for programs",
    },
}
# /v1 completion fields bounded as OpenAI bounds them rather than as the native parameter is.
OPENAI_BOUNDS = {
    "temperature": "OpenAI's range is 0 to 2 (the native 0 to 10 would surprise an OpenAI client)",
    "top_p": "OpenAI takes 0 (only the most likely: greedy), which native top_p (above 0) has no word for",
    "prompt": "a string or a list of strings, each held to the native limit in completions._prompts",
    "stop": "a string or a list, its count held to the native MAX_STOPS in completions.native_params",
}


def kept(face: str, settings: tuple[Setting, ...]) -> list[str]:
    return [s.name for s in settings if s.name not in LEFT_OUT.get(face, {})]


def json_bounds(schema: dict) -> dict:
    """The bounds of an optional field's JSON schema, in the definition's words."""
    branch = next(b for b in schema.get("anyOf", [schema]) if b.get("type") != "null")
    names = {"minimum": "ge", "exclusiveMinimum": "gt", "maximum": "le", "exclusiveMaximum": "lt"}
    return {names[k]: v for k, v in branch.items() if k in names} | (
        {"choices": tuple(branch["enum"])} if "enum" in branch else {})


def definition_bounds(s: Setting) -> dict:
    return {k: getattr(s, k) for k in ("ge", "gt", "le", "lt") if getattr(s, k) is not None} | (
        {"choices": s.choices} if s.choices else {})


# -- the native request schemas, /v1's extension and GET /jobs/defaults ------------------------------------


@pytest.mark.parametrize(("schema", "settings"), [(ModelSpec, MODEL), (TrainingSpec, TRAINING)],
                         ids=["model", "training"])
def test_the_job_schemas_take_every_setting_with_its_bounds(schema, settings):
    assert list(schema.model_fields) == kept("jobs", settings)
    properties = schema.model_json_schema()["properties"]
    for s in settings:
        if s.name in properties:
            assert json_bounds(properties[s.name]) == definition_bounds(s), s.name
            assert s.help in properties[s.name]["description"], s.name


def test_v1s_extension_is_the_native_schemas_and_its_own_fields_keep_the_bounds():
    options = v1.CharrnnOptions.model_fields
    assert options["model"].annotation is ModelSpec and options["training"].annotation is TrainingSpec
    properties = v1.JobCreate.model_json_schema()["properties"]
    for name in ("max_seconds", "seed"):
        assert json_bounds(properties[name]) == definition_bounds(next(s for s in TRAINING if s.name == name))


def test_jobs_defaults_gives_every_field_a_default_and_a_form_description():
    defaults = job_defaults(None)
    assert list(defaults["model"]) == list(ModelSpec.model_fields)
    assert list(defaults["training"]) == list(TrainingSpec.model_fields)
    fields = form_fields(tuple(TrainingSpec.model_fields))
    assert defaults["fields"] == fields
    for group, settings in (("model", MODEL), ("training", TRAINING)):
        assert list(fields[group]) == kept("jobs", settings)
        for s in settings:
            if s.name in fields[group]:
                described = fields[group][s.name]
                assert described["type"] == ("choice" if s.choices else s.type.__name__)
                assert {k: v for k, v in described.items() if k in ("ge", "gt", "le", "lt")} == {
                    k: v for k, v in definition_bounds(s).items() if k != "choices"}


# -- the command line ----------------------------------------------------------------------------------------


def options_of(command: str) -> set[str]:
    params = get_command(cli).commands[command].params
    return {opt for p in params for opt in p.opts if opt.startswith("--")}


def test_train_takes_every_setting_and_so_every_one_the_api_takes():
    options = options_of("train")
    for s in (*MODEL, *TRAINING):
        assert "--" + s.name.replace("_", "-") in options, s.name
    api = {*ModelSpec.model_fields, *TrainingSpec.model_fields}
    assert {"--" + name.replace("_", "-") for name in api} <= options


def test_generate_takes_every_sampling_parameter():
    assert {"--" + name.replace("_", "-") for name in SAMPLING} <= options_of("generate")


def outside(s: Setting) -> list:
    """Values just outside each of a setting's bounds."""
    if s.choices:
        return ["nope"]
    step = 1 if s.type is int else 0.001
    return [v for v in (s.ge - step if s.ge is not None else None, s.gt, s.le + step if s.le is not None else None,
                        s.lt) if v is not None]


@pytest.mark.parametrize("s", [s for s in (*MODEL, *TRAINING) if s.choices or s.bounds()], ids=lambda s: s.name)
def test_the_engine_refuses_a_value_outside_the_definitions_bounds_naming_the_setting(s):
    from worker.engine.config import check_model_settings
    from worker.engine.errors import ConfigError

    for value in outside(s):
        with pytest.raises(ConfigError, match=f"^{s.name}: got"):
            if s in MODEL:
                check_model_settings({s.name: value})
            else:
                TrainConfig(**{s.name: value})


def test_the_engine_knows_exactly_the_optimizers_the_definition_offers():
    from worker.engine.optim import OPTIMIZERS

    assert tuple(OPTIMIZERS) == next(s for s in TRAINING if s.name == "optimizer").choices


# -- /v1's completions and the one table of names ------------------------------------------------------------


def test_v1_completions_carry_every_sampling_parameter_with_its_bounds():
    properties = v1.CompletionRequest.model_json_schema()["properties"]
    for name in SAMPLING:
        param = v1.openai_param(name)
        assert param in properties, name
        if name not in OPENAI_BOUNDS:
            assert field_bounds(v1.CompletionRequest.model_fields[param]) == field_bounds(
                SamplingParams.model_fields[name]), name


def v1_paths() -> set[str]:
    paths = {*v1.JobCreate.model_fields, *v1.CompletionRequest.model_fields}
    paths |= {f"hyperparameters.{name}" for name in v1.Hyperparameters.model_fields}
    paths |= {"charrnn.model", "charrnn.training"} | {f"charrnn.model.{n}" for n in ModelSpec.model_fields}
    return paths | {f"charrnn.training.{n}" for n in TrainingSpec.model_fields}


def test_the_param_table_maps_real_native_fields_to_real_v1_fields():
    from app.jobs.schemas import JobCreate

    native = {*SAMPLING, *JobCreate.model_fields, "validation_corpus_id"}  # the last: the Job column /v1 fills
    native |= {f"model.{n}" for n in ModelSpec.model_fields} | {f"training.{n}" for n in TrainingSpec.model_fields}
    assert set(v1.OPENAI_PARAMS) <= native
    assert set(v1.OPENAI_PARAMS.values()) <= v1_paths()
    for name in native:  # (native `model`, the settings, is /v1's `model`, the model continued: no clash)
        assert v1.openai_param(name) in v1_paths(), name
    # Errors raised by /v1 itself already name /v1's fields: mapping one again must leave it as it is.
    for path in v1_paths():
        assert v1.openai_param(path) == path, path


# -- the README ------------------------------------------------------------------------------------------------


def _default(s: Setting) -> str:
    if s.name in AUTO_MODEL_FIELDS:
        return "chosen"
    return "none" if s.default is None else f"`{s.default}`"


def readme_settings_table() -> str:
    """The README's table of model and training settings, as the definition writes it."""
    rows = ["| `POST /jobs` | `charrnn train` | default | bounds | what |", "| --- | --- | --- | --- | --- |"]
    for group, settings in (("model", MODEL), ("training", TRAINING)):
        for s in settings:
            field = "CLI only" if s.name in LEFT_OUT["jobs"] else f"`{group}.{s.name}`"
            option = "--" + s.name.replace("_", "-")
            rows.append(f"| {field} | `{option}` | {_default(s)} | {s.bounds() or 'any'} | {s.help} |")
    return "\n".join(rows)


def test_the_readme_settings_table_is_the_definition():
    expected = readme_settings_table()
    assert expected in README, "the README's settings table differs from the definition; it should read:\n" + expected
    assert README.count("| `POST /jobs` | `charrnn train` |") == 1


def test_the_readme_names_every_sampling_parameter_on_each_face():
    generate_line = next(line for line in README.splitlines() if line.startswith("| `charrnn generate CHECKPOINT"))
    route_line = next(line for line in README.splitlines() if line.startswith("| `POST /generate`"))
    for name in SAMPLING:
        assert f"--{name.replace('_', '-')}" in generate_line, name
        assert f"`{name}`" in route_line, name


def test_the_readme_environment_table_is_the_service_settings():
    section = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    named = set()
    for first, rest in re.findall(r"^\| `CHARRNN_([A-Z_]+)`((?: / `(?:CHARRNN)?_[A-Z_]+`)*)", section, re.M):
        named.add(first.lower())
        prefix = first.rsplit("_", 1)[0]
        for other in re.findall(r"`(CHARRNN)?_([A-Z_]+)`", rest):
            named.add((other[1] if other[0] else f"{prefix}_{other[1]}").lower())
    assert named == set(Settings.model_fields)


# -- the dashboard ----------------------------------------------------------------------------------------------


def test_the_new_job_form_names_only_real_settings():
    """The form draws its fields from GET /jobs/defaults (above); its own lists may only name real settings."""
    script = (STATIC / "js" / "views" / "new-job.js").read_text()
    auto = set(re.search(r"AUTO_FIELDS = new Set\(\[([^\]]*)\]\)", script).group(1).replace('"', "").split(", "))
    assert set(AUTO_MODEL_FIELDS) <= auto
    # Left empty, each means "chosen for the budget" (the model's size, the evaluation schedule).
    assert all(next(s for s in (*MODEL, *TRAINING) if s.name == name).default is None or name in AUTO_MODEL_FIELDS
               for name in auto)
    from app.jobs.schemas import JobCreate

    names = {s.name for s in (*MODEL, *TRAINING)} | set(JobCreate.model_fields)
    quoted = set(re.findall(r'"([a-z]+_[a-z_]+)"', script)) | set(re.findall(r"\b([a-z]+_[a-z_]+):", script))
    assert quoted <= names, quoted - names


def test_the_playground_has_a_field_for_every_sampling_parameter():
    page = (STATIC / "index.html").read_text()
    for name in SAMPLING:
        if name not in LEFT_OUT["playground"]:
            assert f'id="g-{name}"' in page, name


if __name__ == "__main__":
    print(readme_settings_table())
