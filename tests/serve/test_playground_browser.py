"""The playground in a real browser: Playwright driving Debian's chromium (headless) against a live server.

Every test saves a 1400x1000 screenshot to runs/screenshots/<test>.png when it fails (always, with
GPT3LAB_SCREENSHOTS_ALWAYS=1, to look at the page). Skipped (with the
reason) only when no chromium binary is installed: `.ci/run` installs it (apt-get install -y chromium).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer

CHROMIUM = os.environ.get("GPT3LAB_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
SHOTS = Path(os.environ.get("GPT3LAB_SCREENSHOTS", "runs/screenshots"))
VIEW = {"width": 1400, "height": 1000}
N_LAYER, N_HEAD, WINDOW = 2, 4, 4

if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
    pytest.skip(f"chromium is not installed at {CHROMIUM} (install it: apt-get install -y chromium; "
                f".ci/run does)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra's playwright package is missing")


def _serve_conftest():
    """tests/serve/conftest.py as a module of its own name (`from conftest import` finds whichever test
    directory's conftest pytest loaded first)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("serve_conftest", Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def site():
    """A live server over a tiny random model with a banded layer (GPT-3's alternating pattern)."""
    make_server = _serve_conftest().make_server
    torch.manual_seed(0)
    tok = Tokenizer.gpt2()
    cfg = ModelConfig(vocab_size=tok.vocab_size, context=128, n_layer=N_LAYER, d_model=32, n_head=N_HEAD,
                      attention_pattern="alternating", local_window=WINDOW)
    srv = make_server((GPT(cfg).eval(), tok))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, site, request):
    pg = browser.new_page(viewport=VIEW)
    pg.set_default_timeout(60_000)
    pg.goto(site.url + "/")
    pg.wait_for_function("document.getElementById('model').value === 'tiny'")
    yield pg
    failed = getattr(request.node, "rep_call", None)
    if (failed is not None and failed.failed) or os.environ.get("GPT3LAB_SCREENSHOTS_ALWAYS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SHOTS / f"{request.node.name}.png"))
    pg.close()


def generate(pg, tokens=6, seed=0):
    pg.fill("#max_tokens", str(tokens))
    pg.fill("#seed", str(seed))
    pg.click("#go")
    pg.wait_for_function(f"document.getElementById('stats').textContent.startsWith('{tokens} tokens')")


def test_generate_shows_tokens_gauge_and_no_favicon_404(page, site):
    assert page.inner_text("#ctx") == "128"
    page.wait_for_function("Number(document.getElementById('ntok').textContent) > 0")
    bad = []
    page.on("response", lambda r: bad.append(r.url) if r.status >= 400 else None)
    generate(page, tokens=6)
    assert page.locator("#out .tok").count() == 6 and page.inner_text("#status") == ""
    page.hover("#out .tok >> nth=2")
    assert "logprob" in page.inner_text("#detail") and page.locator("#detail table tr").count() == 5
    page.reload()
    page.wait_for_function("document.getElementById('model').value === 'tiny'")
    assert not bad
    assert page.request.get(site.url + "/favicon.ico").status == 200


def test_inside_all_heads_labelled_and_banded_and_below_the_detail_box(page):
    generate(page, tokens=5)
    page.check("#withOut")                         # inspect the completion as well as the prompt
    page.click("#inspect")
    page.wait_for_function("document.querySelectorAll('#chips .chip').length > 0")
    n_prompt = len(Tokenizer.gpt2().encode("ROMEO:"))
    assert page.locator("#chips .chip").count() == n_prompt + 5
    page.click("#chips .chip >> nth=1")
    detail, inside = page.locator("#detail").bounding_box(), page.locator("#tabs").bounding_box()
    assert detail["y"] + detail["height"] <= inside["y"] + 1          # the detail table no longer runs under
    heat = page.locator("#heat").bounding_box()
    assert heat["y"] + heat["height"] <= VIEW["height"]               # the heatmap is above the fold
    assert page.eval_on_selector("#heat", "c => c.dataset.pad") == "64"    # token labels on both axes
    page.select_option("#layer", "1")
    page.wait_for_function("document.getElementById('band').textContent.includes('banded')")
    assert f"last {WINDOW}" in page.inner_text("#band")
    page.check("#allHeads")
    page.wait_for_function(f"document.querySelectorAll('#heads canvas').length === {N_HEAD}")
    assert page.inner_text("#heads figure >> nth=3") == "layer 1 head 3"
    # the band is drawn: a pixel outside it (query T-1, key 0) has the band colour
    colour = page.evaluate("""() => { const c = document.querySelector('#heads canvas'), s = Number(c.dataset.s),
        T = Number(c.dataset.T); return Array.from(c.getContext('2d').getImageData(1, (T - 1) * s + 1, 1, 1).data); }""")
    assert colour[:3] == [0xfd, 0xe0, 0xc4]


def test_tracks_grid_and_cell_top_k(page):
    page.click("#tabs button[data-tab=tracksP]")
    page.click("#tracksGo")
    page.wait_for_function("document.querySelectorAll('#tracks tr').length > 1")
    n = len(Tokenizer.gpt2().encode("ROMEO:"))
    assert page.locator("#tracks tr").count() == 1 + N_LAYER + 1                   # header + embedding + blocks
    assert page.locator("#tracks tr >> nth=1").locator("td.cell").count() == n
    assert page.inner_text("#tracks tr >> nth=1 >> th") == f"block {N_LAYER - 1}"   # the top of the stack first
    page.click("#tracks tr >> nth=1 >> td.cell >> nth=0")
    assert page.locator("#cellTop table tr").count() == 5 and "‖x‖" in page.inner_text("#cellTop")


def test_step_three_tokens_then_append_to_prompt(page):
    page.click("#tabs button[data-tab=stepP]")
    page.fill("#seed", "3")
    for i in range(1, 4):
        page.click("#stepGo")
        page.wait_for_function(f"document.getElementById('sstats').textContent.startsWith('step {i}:')")
        assert page.locator("#stepBars tr.picked").count() == 1
    assert page.locator("#stepText .gen").count() == 2 and page.locator("#stepText .new").count() == 1
    page.click("#append")                           # prompt := the decoded prompt + 3 drawn tokens
    page.wait_for_function("document.getElementById('prompt').value !== 'ROMEO:'")
    assert page.input_value("#prompt").startswith("ROMEO:")
    page.wait_for_function("document.getElementById('ntok').textContent === '6'")


def test_priming_panel_plots_the_curve(page):
    page.click("#tabs button[data-tab=primeP]")
    page.fill("#primeK", "2")
    page.fill("#primeN", "3")
    page.click("#primeGo")
    page.wait_for_function("document.querySelectorAll('#primePlot circle').length === 3")
    assert "k=2:" in page.inner_html("#primePlot") and len(page.inner_text("#primeExample").split(" ")[0]) == 2 * 3 + 2  # 2 examples + query
    page.select_option("#primeMetric", "answer_logprob")
    assert "log p(gold answer)" in page.text_content("#primePlot")


def test_an_error_clears_old_results_and_the_next_success_clears_the_error(page):
    generate(page, tokens=4)
    page.fill("#max_tokens", "-1")
    page.click("#go")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('400')")
    assert page.inner_text("#out") == "" and page.inner_text("#stats") == ""
    generate(page, tokens=3)
    assert page.inner_text("#status") == "" and page.locator("#out .tok").count() == 3
