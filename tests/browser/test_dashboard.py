"""The dashboard in a real browser against a real API and worker: what a person does, by the page's labels.

The tests share one browser tab, one service and one trained job, and run in file order (sign in, upload,
train, play, cancel): each one picks up where the one before left the tab, as a person would. They feed the
page hostile text (HTML in names, corpora and samples); the README's pictures come from test_pictures.py.
"""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.harness import KEY, ROOT, small_corpus

pytestmark = pytest.mark.browser

XSS_NAME = "<img src=x onerror=window.__xss=1>"
SCRIPT_LINE = "<script>window.__xss=1</script>\n"
# Shakespeare with a <script> tag every few lines: the model learns to write them, the page must show them as text.
SCRIPT_CORPUS = "".join(
    line + "\n" + (SCRIPT_LINE if i % 3 == 0 else "") for i, line in enumerate(small_corpus(16_000).splitlines())
)
# Tiny, and bounded by time rather than steps: it trains for the same 8 s on any machine.
TINY = {
    "Hidden size": "32",
    "Num layers": "1",
    "Embedding dim": "16",
    "Sequence length": "16",
    "Batch size": "4",
    "Warmup steps": "5",
    "Eval every": "40",
    "Checkpoint every": "80",
    "Log every": "5",
    "Sample length": "60",
    "Validation fraction": "0.05",
}
state: dict = {}
# The elements that stick out past the right edge, for the message of a failing width check.
WIDER_THAN_VIEWPORT = """() => [...document.querySelectorAll('body *')]
    .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
    .slice(0, 8).map((e) => `${e.tagName}#${e.id}.${e.className} right=${e.getBoundingClientRect().right}`)"""


@pytest.fixture(scope="module")
def page(browser, service):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=service.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.errors = errors
    page.set_default_timeout(15_000)
    yield page
    context.close()


def no_xss(page: Page) -> None:
    assert page.evaluate("window.__xss") is None, "user- or model-supplied text ran as script"
    assert page.locator("img").count() == 0, "user-supplied text became an <img> element"
    assert page.locator("body script").count() == 0, "user- or model-supplied text became a <script> element"


def expected_errors(page: Page) -> list[str]:
    # The browser logs every 4xx it was answered; the tests provoke some on purpose. Anything else is a bug.
    return [e for e in page.errors if not re.search(r"status of (401|409|422)", e)]


def sign_in(page: Page, key: str) -> None:
    page.get_by_role("textbox", name="API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def nav(page: Page, name: str) -> None:
    page.locator("#nav").get_by_role("link", name=name, exact=True).click()


def open_advanced(page: Page) -> None:
    if page.locator("#advanced").get_attribute("open") is None:
        page.get_by_text("Advanced settings").click()


def fill_tiny_job(page: Page, corpus_id: str, name: str) -> None:
    form = page.locator("#job-form")
    form.get_by_label("Corpus", exact=True).select_option(corpus_id)
    open_advanced(page)
    for label, value in TINY.items():
        form.get_by_label(label, exact=True).fill(value)
    form.get_by_label("Job name (optional)").fill(name)


def test_a_wrong_key_is_refused_and_says_so(page, service):
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
    sign_in(page, "crn_not_a_real_key_000")
    expect(page.locator("#signin-error")).to_contain_text("invalid or revoked API key")
    expect(page.get_by_role("link", name="Corpora")).to_be_hidden()


def test_a_revoked_key_is_sent_back_to_sign_in(page, service):
    made = service.cli("keys", "create", "browser-revoked")
    key = made.stdout.strip().splitlines()[-1]
    key_id = re.search(r"key_[0-9a-f]+", made.stderr).group()
    sign_in(page, key)
    expect(page.get_by_role("heading", name="Corpora", exact=True)).to_be_visible()
    assert service.cli("keys", "revoke", key_id).returncode == 0
    nav(page, "Jobs")
    expect(page.locator("#signin-error")).to_contain_text("invalid or revoked API key")
    assert page.evaluate("sessionStorage.length") == 0


def test_sign_in_keeps_the_key_in_the_tab_only(page):
    sign_in(page, KEY)
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()  # where it was going
    nav(page, "Corpora")
    expect(page.get_by_role("heading", name="Corpora", exact=True)).to_be_visible()
    assert KEY not in page.url
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
    assert page.evaluate("Object.values(sessionStorage)") == [KEY]


def test_upload_with_the_picker_and_a_progress_bar(page, service):
    page.get_by_label("Corpus file").set_input_files(
        {"name": "scripted.txt", "mimeType": "text/plain", "buffer": SCRIPT_CORPUS.encode()}
    )
    page.get_by_label("Name (optional)", exact=True).fill(XSS_NAME)
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-status")).to_contain_text("Uploaded")
    expect(page.get_by_role("progressbar", name="Upload progress")).to_have_attribute("value", "100")
    row = page.locator("#corpora-table tbody tr").filter(has_text=XSS_NAME)
    expect(row).to_have_count(1)
    expect(row).to_contain_text(f"{len(SCRIPT_CORPUS):,}")  # characters
    with service.client() as c:
        corpus = next(x for x in c.get("/corpora").json()["data"] if x["name"] == XSS_NAME)
    state["corpus_id"] = corpus["id"]
    expect(row.locator("td").nth(3)).to_have_text(str(corpus["vocab_size"]))


def test_a_corpus_named_like_html_shows_literally_and_runs_nothing(page):
    expect(page.locator("#corpora-table").get_by_text(XSS_NAME, exact=True)).to_be_visible()
    no_xss(page)


def test_the_servers_upload_error_shows_as_it_is(page):
    page.get_by_label("Corpus file").set_input_files(
        {"name": "latin1.txt", "mimeType": "text/plain", "buffer": "caf\u00e9 au lait".encode("latin-1")}
    )
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-error")).to_contain_text("UTF-8")
    expect(page.locator("#upload-error")).to_contain_text("422")


def test_drag_and_drop_then_delete(page):
    data = page.evaluate_handle(
        "() => { const d = new DataTransfer();"
        " d.items.add(new File(['Dropped text, short but real.'], 'dropped.txt', {type: 'text/plain'})); return d; }"
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": data})
    expect(page.locator("#upload-status")).to_contain_text("dropped.txt")
    page.get_by_role("button", name="Upload").click()
    row = page.locator("#corpora-table tbody tr").filter(has_text="dropped.txt")
    expect(row).to_have_count(1)
    page.get_by_role("button", name="Delete dropped.txt").click()
    page.get_by_role("button", name="Yes, delete").click()
    expect(row).to_have_count(0)


def test_a_server_validation_error_shows_beside_its_field(page):
    nav(page, "New job")
    page.locator("#job-form").get_by_label("Corpus", exact=True).select_option(state["corpus_id"])
    # Prefilled from GET /jobs/defaults, not from a copy in the page.
    open_advanced(page)
    expect(page.get_by_label("Num layers")).to_have_value("2")
    # Left empty, the size is chosen for the budget when the job starts, and the field says so.
    expect(page.get_by_label("Hidden size")).to_have_value("")
    expect(page.get_by_label("Hidden size")).to_have_attribute("placeholder", "auto")
    # Each field drawn as its definition says (GET /jobs/defaults' `fields`): a choice is a list of its
    # choices, a fractional setting takes decimals.
    expect(page.locator("#f-training-optimizer option")).to_have_text(["adamw", "muon"])
    expect(page.get_by_label("Optimizer")).to_have_value("adamw")
    expect(page.get_by_label("Decay fraction")).to_have_attribute("step", "any")
    expect(page.get_by_label("Num layers")).to_have_attribute("max", "8")
    page.get_by_label("Max seconds").fill("99999999")
    page.get_by_role("button", name="Start training").click()
    field = page.get_by_label("Max seconds")
    expect(field).to_have_attribute("aria-invalid", "true")
    note = page.locator("[data-field='training.max_seconds'] .field-error")
    expect(note).to_contain_text("less than or equal")
    assert "err-training-max_seconds" in field.get_attribute("aria-describedby")
    expect(page.locator("[data-field='model.hidden_size'] .field-error")).to_have_count(0)


def test_train_a_job_and_watch_it_learn(page, service):
    # A fresh form, whatever the previous test left on the page (a retry starts from its own failure).
    nav(page, "New job")
    expect(page.locator("#job-form").get_by_label("Corpus", exact=True)).to_be_visible()
    fill_tiny_job(page, state["corpus_id"], "scripted-tiny")
    page.get_by_label("Max seconds").fill("8")
    page.get_by_role("button", name="Start training").click()
    expect(page).to_have_url(re.compile(r"#/jobs/job_"))
    state["job_id"] = page.url.split("#/jobs/")[1]
    chart = page.get_by_role("img", name=re.compile("loss"))
    expect(chart).to_be_visible()
    expect(page.get_by_role("progressbar", name="Training progress")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled()

    # While it runs, the chart gains points from the live event stream.
    # (wait_for_function takes functions, not strings: the page's CSP forbids eval, as it should.)
    page.wait_for_function(
        "() => document.querySelector('#job-status').dataset.status === 'running'"
        " && Number(document.querySelector('#loss-chart').dataset.points) > 0",
        timeout=60_000,  # a loaded machine takes a while to start the training process
    )
    first = int(chart.get_attribute("data-points"))
    page.wait_for_function(
        "(first) => Number(document.querySelector('#loss-chart').dataset.points) > first"
        " && document.querySelector('#job-status').dataset.status === 'running'",
        arg=first,
        timeout=15_000,
    )
    expect(page.locator("#samples .sample").first).to_be_visible(timeout=15_000)
    expect(page.locator("#s-lr")).not_to_have_text("")
    expect(page.locator("#s-cps")).not_to_have_text("")

    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=40_000)
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    expect(page.get_by_role("progressbar", name="Training progress")).to_have_attribute("value", "1")
    expect(page.locator("#ckpt-table tbody tr").first).to_be_visible()
    no_xss(page)
    live_points = int(chart.get_attribute("data-points"))

    # A finished job's page draws the same from the stored metrics.
    page.reload()
    expect(page.locator("#job-status")).to_have_text("succeeded")
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) > 0")
    stored_points = int(chart.get_attribute("data-points"))
    assert stored_points >= min(live_points, 2000) * 0.9, (stored_points, live_points)
    expect(page.locator("#samples .sample").first).to_be_visible()
    no_xss(page)


def test_checkpoint_download_sends_the_key(page):
    with page.expect_download() as info:
        page.locator("#ckpt-table tbody tr").first.get_by_role("button", name=re.compile("Download")).click()
    download = info.value
    assert download.suggested_filename.endswith(".safetensors")
    assert download.failure() is None


def test_a_key_revoked_before_a_download_sends_the_tab_to_sign_in(page, service):
    # A second key of the same owner (the bootstrap key's): it sees the same job and checkpoints.
    made = service.cli("keys", "create", "bootstrap")
    key = made.stdout.strip().splitlines()[-1]
    key_id = re.search(r"key_[0-9a-f]+", made.stderr).group()
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, key)
    download = page.locator("#ckpt-table tbody tr").first.get_by_role("button", name=re.compile("Download"))
    expect(download).to_be_visible()
    assert service.cli("keys", "revoke", key_id).returncode == 0
    download.click()
    expect(page.locator("#signin-error")).to_contain_text("invalid or revoked API key")
    expect(page.locator("#ckpt-error")).to_have_text("")
    assert page.evaluate("sessionStorage.length") == 0
    sign_in(page, KEY)  # back where it was, for the tests after this one
    expect(page.locator("#job-status")).to_have_text("succeeded")


def test_playground_streams_generated_text_literally(page):
    page.get_by_role("link", name="Open in playground").click()
    play = page.locator("#view-playground")
    expect(play.get_by_label("Model", exact=True)).to_have_value(state["job_id"])
    play.get_by_label("Prompt", exact=True).fill("<script>")
    play.get_by_label("Temperature", exact=True).fill("0.8")
    play.get_by_label("Length", exact=True).fill("600")
    play.get_by_label("Seed", exact=True).fill("3")
    play.get_by_role("button", name="Generate", exact=True).click()
    output = page.get_by_label("Generated text")
    expect(output).to_have_attribute("data-done", "true", timeout=30_000)
    assert int(output.get_attribute("data-chunks")) > 1, "the text came in one piece, not streamed"
    text = output.text_content()
    assert text.startswith("<script>") and len(text) > len("<script>") + 100
    no_xss(page)
    expect(page.locator("#gen-meta")).to_contain_text("characters from ckpt_")

    page.get_by_label("Text to score").fill("First Citizen:\nBefore we proceed any further, hear me speak.")
    page.get_by_role("button", name="Score").click()
    expect(page.locator("#score-result")).to_contain_text("nats per character")


def test_playground_shows_a_server_error_beside_its_field(page):
    page.get_by_label("Temperature").fill("50")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("[data-field='temperature'] .field-error")).to_contain_text("less than or equal")
    expect(page.get_by_label("Temperature")).to_have_attribute("aria-invalid", "true")


def test_cancel_a_second_job(page):
    nav(page, "New job")
    fill_tiny_job(page, state["corpus_id"], "to-cancel")
    page.get_by_label("Minutes").fill("5")  # the budget in minutes fills in max_seconds
    expect(page.get_by_label("Max seconds")).to_have_value("300")
    page.get_by_role("button", name="Start training").click()
    expect(page).to_have_url(re.compile(r"#/jobs/job_"))
    expect(page.locator("#job-status")).to_have_text(re.compile("queued|running"))
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=20_000)

    nav(page, "Jobs")
    rows = page.locator("#jobs-table tbody tr")
    expect(rows.filter(has_text="to-cancel")).to_contain_text("cancelled")
    expect(rows.filter(has_text="scripted-tiny")).to_contain_text("succeeded")
    expect(page.get_by_role("progressbar", name="Progress of scripted-tiny")).to_have_attribute("value", "1")


VIEWS = ("#/corpora", "#/new", "#/jobs", "#/jobs/{job}", "#/playground", "#/inspect")


def assert_fits(page: Page, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 844})
    for view in VIEWS:
        page.goto("/" + view.format(job=state["job_id"]))
        page.locator(".view:not([hidden]) h1").wait_for()
        page.wait_for_timeout(300)  # lists and the chart fill in
        scroll = page.evaluate("document.documentElement.scrollWidth")
        wide = page.evaluate(WIDER_THAN_VIEWPORT) if scroll > width else []
        assert scroll <= width, f"{view} is {scroll}px wide at a {width}px viewport: {wide}"


def test_a_phone_sized_viewport_has_no_sideways_scrolling(page):
    try:
        assert_fits(page, 390)
    finally:
        page.set_viewport_size({"width": 1280, "height": 860})


def test_a_wide_screen_fits_too(page):
    try:
        assert_fits(page, 1440)
    finally:
        page.set_viewport_size({"width": 1280, "height": 860})


def test_keyboard_only_sign_out_and_in(page):
    page.goto("/#/corpora")
    page.get_by_role("button", name="Sign out").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("textbox", name="API key")).to_be_focused()
    page.keyboard.type(KEY)
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Corpora", exact=True)).to_be_visible()


def test_the_page_has_a_strict_csp_and_ran_without_errors(page, service):
    r = httpx.get(service.url + "/")
    assert r.headers["content-security-policy"] == "default-src 'self'; frame-ancestors 'none'"
    assert "<script>" not in r.text and not re.search(r"\son[a-z]+=", r.text), "inline script in the page"
    static = ROOT / "app" / "dashboard" / "static"
    for asset in ["style.css", *(p.relative_to(static).as_posix() for p in static.rglob("*.js"))]:
        r = httpx.get(f"{service.url}/static/dashboard/{asset}")
        assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
        sinks = re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write", r.text)
        assert not sinks, f"{asset} writes HTML: {sinks.group()}"
    assert expected_errors(page) == [], expected_errors(page)
