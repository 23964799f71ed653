"""The Inspect page, runs compared on the jobs list and the loss chart's controls, in headless Chromium,
found by their accessible names. Two tiny jobs of an owner of its own, trained through the API."""

from __future__ import annotations

import math
import re

import pytest
from playwright.sync_api import expect

from tests.harness import TINY_MODEL, small_corpus

pytestmark = pytest.mark.browser

# Quotes and brackets for the features, and a character that would be markup if inserted as HTML.
CORPUS = small_corpus(8_000) + '\nHe said "come <b>here</b> (now)" and [went].\n' * 40
TEXT = 'He said "come <b>here</b>" (now).'
SHORT = {"max_steps": 30, "eval_every": 10, "checkpoint_every": 10}  # a validation curve of three points
state: dict = {}


@pytest.fixture(scope="module")
def page(browser, service):
    key = state["key"] = service.cli("keys", "create", "inspector").stdout.strip().splitlines()[-1]
    with service.client(key) as c:
        corpus = service.upload(c, CORPUS, name="quotes")
        jobs = [
            service.create_job(
                c, corpus["id"], model=TINY_MODEL, training={**SHORT, "learning_rate": lr}, name=f"lr-{lr}"
            )
            for lr in (0.003, 0.01)
        ]
        state["jobs"] = [service.wait_job(c, j["id"]) for j in jobs]
    assert all(j["status"] == "succeeded" for j in state["jobs"]), state["jobs"]
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=service.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.errors = errors
    page.set_default_timeout(15_000)
    page.goto("/")
    page.get_by_role("textbox", name="API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Corpora", exact=True)).to_be_visible()
    yield page
    assert not page.errors, page.errors
    context.close()


def test_inspect_shades_each_character_and_tells_its_predictions(page):
    page.locator("#nav").get_by_role("link", name="Inspect", exact=True).click()
    expect(page.get_by_role("heading", name="Inspect", exact=True)).to_be_visible()
    view = inspect_view(page)
    view.get_by_label("Model", exact=True).select_option(state["jobs"][0]["id"])
    view.get_by_label("Text", exact=True).fill(TEXT)
    view.get_by_role("button", name="Inspect", exact=True).click()
    chars = page.locator("#inspect-output .ch")
    expect(chars).to_have_count(len(TEXT))
    assert page.locator("#inspect-output").text_content() == TEXT  # as text: "<b>" stayed characters
    assert page.locator("#inspect-output b").count() == 0
    # Hover: the detail names the character's probability and what the model expected.
    chars.nth(2).hover()
    detail = page.locator("#inspect-detail")
    expect(detail).to_contain_text("expected:")
    expect(detail).to_contain_text("surprise")
    # Keyboard: one tab stop for the text, arrows move; the focused character's description says it all.
    chars.first.focus()
    page.keyboard.press("ArrowRight")
    focused = page.locator("#inspect-output .ch:focus")
    expect(focused).to_have_attribute("data-index", "1")
    expect(focused).to_have_attribute("aria-label", re.compile(r'^"e" \(character 2\): probability .* Expected: '))
    expect(detail).to_have_attribute("data-index", "1")
    assert chars.first.evaluate("(e) => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"


def inspect_view(page):
    return page.get_by_role("region", name="Inspect")


def test_the_neuron_view_and_find_units(page):
    page = inspect_view(page)  # a locator: the lookups below stay within the Inspect section
    page.get_by_label("Layer", exact=True).fill("0")
    page.get_by_label("Unit", exact=True).fill("3")
    page.get_by_role("button", name="Inspect", exact=True).click()
    expect(page.locator("#inspect-output")).to_have_attribute("aria-label", re.compile("layer 0 unit 3"))
    first = page.locator("#inspect-output .ch").first
    expect(first).to_have_attribute("aria-label", re.compile(r"Layer 0 unit 3 \(h\): "))
    # A unit the model lacks: the server's message shows beside the field.
    page.get_by_label("Unit", exact=True).fill("99")
    page.get_by_role("button", name="Inspect", exact=True).click()
    expect(page.locator("#inspect-error")).to_contain_text("units must be between 0 and 31")
    page.get_by_label("Unit", exact=True).fill("")
    page.get_by_label("Unit", exact=True).press("Tab")  # a changed control reads the text again, shaded by surprise
    expect(page.locator("#inspect-output")).to_have_attribute("aria-label", "Inspected text, shaded by surprise")
    page.get_by_role("button", name="Find units").click()
    quotes = page.locator('#units-found section[data-feature="inside_quotes"]')
    expect(quotes.get_by_role("button").first).to_be_visible()
    label = quotes.get_by_role("button").first.get_attribute("aria-label")
    layer, unit = re.search(r"layer (\d+) unit (\d+)", label).groups()
    quotes.get_by_role("button").first.click()
    expect(page.get_by_label("Unit", exact=True)).to_have_value(unit)
    expect(page.locator("#inspect-output")).to_have_attribute("aria-label", re.compile(f"layer {layer} unit {unit}"))


# The two reference losses a chart draws, and how a canvas says what it drew (js/chart.js).
REFERENCE_NAMES = {"unigram": "unigram (character frequencies)", "bigram": "bigram (previous character)"}
DRAWN = """(id) => { const d = document.getElementById(id).dataset;
    return {count: Number(d.references), labels: d.referenceLabels, yMin: Number(d.yMin), yMax: Number(d.yMax)}; }"""


def drawn(page, canvas_id: str) -> dict:
    return page.evaluate(DRAWN, canvas_id)


def assert_references_and_axis(drawn: dict, references: dict, curve: list[float], per: float = 1.0) -> None:
    """Exactly the unigram and bigram lines, labelled with their value in the unit shown (`per`: nats per unit,
    1 for nats, ln 2 for bits), and a y-axis that spans the curve and those lines with a small margin: not dragged to 0
    by a field of `reference_losses` that is not a loss (val_fraction, 0.1)."""
    assert drawn["count"] == 2, drawn
    expected = [f"{REFERENCE_NAMES[n]} {references[n] / per:.4f}" for n in ("unigram", "bigram")]
    assert sorted(drawn["labels"].split("|")) == sorted(expected), drawn
    values = [v / per for v in curve] + [references[n] / per for n in ("unigram", "bigram")]
    lo, hi = min(values), max(values)
    span = drawn["yMax"] - drawn["yMin"]
    assert drawn["yMin"] <= lo and drawn["yMax"] >= hi, (drawn, lo, hi)
    assert drawn["yMin"] >= lo - 0.06 * span > 0, (drawn, lo, hi)  # a 5% margin below the lowest value, no more
    assert drawn["yMax"] <= hi + 0.06 * span, (drawn, lo, hi)


def curve_of(service, job_id: str, field: str) -> list[float]:
    with service.client(state["key"]) as c:
        return [m[field] for m in c.get(f"/jobs/{job_id}/metrics?max_points=2000").json() if m[field] is not None]


def test_the_jobs_carry_more_reference_fields_than_the_two_losses():
    # The API's object has the losses in bits and the held-out share too: the charts must pick the two by name.
    for job in state["jobs"]:
        assert set(job["reference_losses"]) >= {"unigram", "bigram", "unigram_bits", "bigram_bits", "val_fraction"}


def test_compare_two_runs(page, service):
    page.locator("#nav").get_by_role("link", name="Jobs", exact=True).click()
    for job in state["jobs"]:
        page.get_by_label(f"Select {job['name']} to compare").check()
    page.get_by_role("button", name="Compare").click()
    chart = page.locator("#compare-chart")
    expect(chart).to_have_attribute("data-series", "2")
    expect(chart).to_have_attribute("data-references", "2")  # one corpus: its reference lines
    expect(chart).to_have_attribute("aria-label", re.compile("lr-0.003 ends at"))
    validation = [v for job in state["jobs"] for v in curve_of(service, job["id"], "val_loss")]
    assert_references_and_axis(drawn(page, "compare-chart"), state["jobs"][0]["reference_losses"], validation)
    row = page.locator('#compare-table tr[data-setting="training.learning_rate"]')
    expect(row).to_have_class(re.compile("differs"))
    expect(page.locator('#compare-table tr[data-setting="model.hidden_size"]')).not_to_have_class(re.compile("differs"))
    chart.hover()
    expect(page.locator("#compare-hover")).to_contain_text("lr-0.01: step")


def test_bits_per_character_and_smoothing_on_the_job_page(page, service):
    job = state["jobs"][0]
    page.goto(f"/#/jobs/{job['id']}")
    chart = page.get_by_role("img", name=re.compile("Loss chart"))
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) > 0")
    expect(chart).to_have_attribute("data-references", "2")
    expect(page.locator("#chart-ref-key")).to_be_visible()
    curve = curve_of(service, job["id"], "train_loss") + curve_of(service, job["id"], "val_loss")
    page.wait_for_function("() => document.querySelector('#loss-chart').dataset.yMin !== undefined")
    assert_references_and_axis(drawn(page, "loss-chart"), job["reference_losses"], curve)
    nats_y_max = drawn(page, "loss-chart")["yMax"]
    # The doctor's reading of the finished run, as the job's record has it.
    expect(page.locator("#job-diagnosis")).to_be_visible()
    expect(page.locator("#job-diagnosis-message")).to_have_text(job["diagnosis"]["message"])
    nats = float(page.locator("#s-best").text_content())
    checkpoint_loss = page.locator("#ckpt-table tbody tr").first.locator("td").nth(1)
    expect(checkpoint_loss).not_to_have_text("–")
    checkpoint_nats = float(checkpoint_loss.text_content())
    page.locator("#view-job").get_by_role("checkbox", name="Bits per character").check()
    expect(chart).to_have_attribute("aria-label", re.compile("bits per character"))
    # The redraw comes on the next animation frame.
    page.wait_for_function("(nats) => Number(document.querySelector('#loss-chart').dataset.yMax) !== nats",
                           arg=nats_y_max)
    assert_references_and_axis(drawn(page, "loss-chart"), job["reference_losses"], curve, per=math.log(2))
    bits = float(page.locator("#s-best").text_content())
    assert bits == pytest.approx(nats / math.log(2), abs=2e-4)
    assert float(checkpoint_loss.text_content()) == pytest.approx(checkpoint_nats / math.log(2), abs=2e-4)
    expect(page.locator("#view-job").get_by_label("Smoothing")).to_be_visible()
    chart.hover()
    expect(page.locator("#chart-hover")).to_contain_text("(raw)")
    expect(page.locator("#chart-hover")).to_contain_text("bits per character")
    expect(page.get_by_role("link", name="Metrics CSV")).to_be_visible()
    page.locator("#view-job").get_by_role("checkbox", name="Bits per character").uncheck()
    expect(chart).to_have_attribute("aria-label", re.compile("nats per character"))


def test_a_phone_fits_the_inspected_text_and_the_comparison(page):
    try:
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto("/#/inspect")
        view = inspect_view(page)
        view.get_by_label("Model", exact=True).select_option(state["jobs"][1]["id"])
        view.get_by_label("Text", exact=True).fill(("First Citizen: " * 20 + "\n") * 3)
        view.get_by_role("button", name="Inspect", exact=True).click()
        expect(page.locator("#inspect-output .ch")).to_have_count(903)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.locator("#nav").get_by_role("link", name="Jobs", exact=True).click()
        for job in state["jobs"]:
            page.get_by_label(f"Select {job['name']} to compare").check()
        page.get_by_role("button", name="Compare").click()
        expect(page.locator("#compare-chart")).to_have_attribute("data-series", "2")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        page.set_viewport_size({"width": 1280, "height": 860})
