"""The README's pictures, from what a person would really do: upload samples/tinyshakespeare.txt, train on it
for a short while with the size left to the server, watch it, then play with the model.

Its own owner (a key of its own), so no other test's corpora or jobs appear in the pictures. The budget is
CHARRNN_PICTURES_SECONDS (12 s by default, to keep the suite short); the committed pictures come from
    CHARRNN_PICTURES_SECONDS=120 .venv/bin/python -m pytest tests/browser/test_pictures.py tests/browser/test_docs.py
    cp build/screenshots/*.png docs/screenshots/
"""

from __future__ import annotations

import os
import re
import time

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import screenshot
from tests.harness import ROOT

pytestmark = pytest.mark.browser

SAMPLE = ROOT / "samples" / "tinyshakespeare.txt"
SECONDS = os.environ.get("CHARRNN_PICTURES_SECONDS", "12")
# The server's defaults, but evaluated (with a sample) and saved often enough to show within a short budget.
ADVANCED = {"Eval every": "50", "Checkpoint every": "100", "Log every": "5"}
state: dict = {}


@pytest.fixture(scope="module")
def page(browser, service):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=service.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def nav(page: Page, name: str) -> None:
    page.locator("#nav").get_by_role("link", name=name, exact=True).click()


def test_sign_in(page, service):
    key = state["key"] = service.cli("keys", "create", "shakespeare").stdout.strip().splitlines()[-1]
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
    screenshot(page, "signin")
    page.get_by_role("textbox", name="API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Corpora", exact=True)).to_be_visible()


def test_upload_tinyshakespeare(page):
    page.get_by_label("Corpus file").set_input_files(str(SAMPLE))
    page.get_by_label("Name (optional)", exact=True).fill("tinyshakespeare")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-status")).to_contain_text("Uploaded tinyshakespeare")
    row = page.locator("#corpora-table tbody tr").filter(has_text="tinyshakespeare")
    expect(row).to_contain_text(f"{len(SAMPLE.read_text(encoding='utf-8')):,}")
    screenshot(page, "corpora")


def test_a_job_with_its_size_left_to_the_server(page):
    row = page.locator("#corpora-table tbody tr").filter(has_text="tinyshakespeare")
    row.get_by_role("link", name="Train on tinyshakespeare").click()
    form = page.locator("#job-form")
    expect(form.get_by_label("Corpus", exact=True)).to_have_value(row.get_attribute("data-id"))
    form.get_by_label("Max seconds").fill(SECONDS)
    form.get_by_label("Job name (optional)").fill("shakespeare-lstm")
    form.get_by_text("Advanced settings").click()
    for label, value in ADVANCED.items():
        form.get_by_label(label, exact=True).fill(value)
    expect(form.get_by_label("Hidden size")).to_have_attribute("placeholder", "auto")
    screenshot(page, "new-job")
    page.get_by_role("button", name="Start training").click()
    expect(page).to_have_url(re.compile(r"#/jobs/job_"))
    state["job_id"] = page.url.split("#/jobs/")[1]


def test_the_header_shows_the_size_the_worker_chose(page, service):
    # Left out, the size reads "auto" until the worker has chosen it, after the job turned running.
    expect(page.locator("#job-arch")).to_have_text("lstm 2×auto")
    model = {}
    with service.client(state["key"]) as c:
        deadline = time.monotonic() + 120  # a loaded machine takes a while to start the training process
        while not model.get("hidden_size") and time.monotonic() < deadline:
            time.sleep(0.5)
            model = c.get(f"/jobs/{state['job_id']}").json()["model"]
    assert model.get("hidden_size"), model
    # The page learns it without a reload.
    expect(page.locator("#job-arch")).to_have_text(f"lstm 2×{model['hidden_size']}")


def test_watch_it_learn(page):
    samples = page.locator("#samples .sample")
    status = page.locator("#job-status")
    # Mid-run, with samples arriving, unless the budget is too short for two evaluations.
    page.wait_for_function(
        "() => document.querySelectorAll('#samples .sample').length >= 2"
        " || document.querySelector('#job-status').dataset.status !== 'running'",
        timeout=int(float(SECONDS) * 1000) + 60_000,
    )
    expect(samples.first).to_be_visible()
    expect(status).to_have_text("succeeded", timeout=int(float(SECONDS) * 1000) + 60_000)
    expect(page.locator("#ckpt-table tbody tr").first).to_be_visible()
    # The finished run: its curve against the unigram and bigram reference lines, and the doctor's reading.
    expect(page.locator("#loss-chart")).to_have_attribute("data-references", "2")
    expect(page.locator("#job-diagnosis")).to_be_visible()
    page.wait_for_timeout(300)  # the last redraw
    screenshot(page, "job", height=1150)


def test_the_job_on_a_phone(page):
    try:
        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) > 0")
        screenshot(page, "job-phone")
    finally:
        page.set_viewport_size({"width": 1280, "height": 860})


def test_jobs_list(page):
    nav(page, "Jobs")
    expect(page.locator("#jobs-table tbody tr").filter(has_text="shakespeare-lstm")).to_contain_text("succeeded")
    screenshot(page, "jobs")


def test_playground(page):
    nav(page, "Playground")
    play = page.locator("#view-playground")
    play.get_by_label("Model", exact=True).select_option(state["job_id"])
    play.get_by_label("Prompt", exact=True).fill("ROMEO:\n")
    play.get_by_label("Length", exact=True).fill("400")
    play.get_by_label("Seed", exact=True).fill("7")
    play.get_by_role("button", name="Generate", exact=True).click()
    output = page.get_by_label("Generated text")
    expect(output).to_have_attribute("data-done", "true", timeout=30_000)
    assert output.text_content().startswith("ROMEO:\n") and len(output.text_content()) > 300
    page.get_by_label("Text to score").fill("First Citizen:\nBefore we proceed any further, hear me speak.")
    page.get_by_role("button", name="Score").click()
    expect(page.locator("#score-result")).to_contain_text("nats per character")
    screenshot(page, "playground")


def test_inspect(page):
    """The inspect view of the trained model: a held-out passage (the end of the corpus is the validation
    split), shaded by the unit "Find units" ranks best; which unit and how strongly is written beside the
    picture (inspect-unit.txt), for the README."""
    nav(page, "Inspect")
    view = page.get_by_role("region", name="Inspect")
    view.get_by_label("Model", exact=True).select_option(state["job_id"])
    text = SAMPLE.read_text(encoding="utf-8")
    passage = text[-700:]
    passage = passage[passage.index("\n\n") + 2 :]  # from the start of a speech
    view.get_by_label("Text", exact=True).fill(passage)
    view.get_by_role("button", name="Find units").click()
    buttons = view.locator("#units-found button")
    expect(buttons.first).to_be_visible(timeout=60_000)
    labels = [b.get_attribute("aria-label") for b in buttons.all()]
    # The strongest unit of all features ("Show layer L unit U (s), correlation C with FEATURE").
    best = max(labels, key=lambda label: abs(float(re.search(r"correlation (-?[\d.]+)", label).group(1))))
    view.get_by_role("button", name=best, exact=True).click()
    unit = re.search(r"layer (\d+) unit (\d+)", best)
    expect(view.locator("#inspect-output")).to_have_attribute(
        "aria-label", re.compile(f"layer {unit.group(1)} unit {unit.group(2)}")
    )
    view.locator("#inspect-output .ch").nth(40).hover()
    expect(view.locator("#inspect-detail")).to_contain_text("expected:")
    (screenshot(page, "inspect", height=1100).parent / "inspect-unit.txt").write_text(best + "\n")
