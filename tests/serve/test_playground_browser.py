"""The playground in a real browser: Playwright driving Debian's chromium (headless) against a live server.

Every test saves 1400x1000 screenshots of each view to runs/screenshots/<test>-<view>.png when it fails
(always, with GPT3LAB_SCREENSHOTS_ALWAYS=1, to look at the page). Skipped (with the
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


TABS = ("fwdP", "inside", "tracksP", "stepP", "primeP")


def open_page(browser, site, viewport=VIEW):
    pg = browser.new_page(viewport=viewport)
    pg.set_default_timeout(60_000)
    pg.script_errors = []
    pg.on("pageerror", lambda e: pg.script_errors.append(str(e)))
    pg.goto(site.url + "/")
    pg.wait_for_function("document.getElementById('model').value === 'tiny'")
    return pg


def save_views(pg, name: str) -> None:
    """A full-page screenshot of the page as it is, then one of every tab's view."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    for tab in TABS:
        with contextlib.suppress(Exception):
            pg.evaluate(f"openTab('{tab}')")
            pg.locator(f"#{tab}").screenshot(path=str(SHOTS / f"{name}-{tab}.png"), timeout=5_000)


def _finish(pg, request) -> None:
    failed = getattr(request.node, "rep_call", None)
    if (failed is not None and failed.failed) or os.environ.get("GPT3LAB_SCREENSHOTS_ALWAYS"):
        save_views(pg, request.node.name)
    errors = pg.script_errors
    pg.close()
    assert not errors, errors                                  # no uncaught script error on any page


@pytest.fixture
def page(browser, site, request):
    pg = open_page(browser, site)
    yield pg
    _finish(pg, request)


@pytest.fixture
def sized_page(browser, site, request):
    """A page `request.param` pixels wide (indirect parametrization)."""
    pg = open_page(browser, site, {"width": request.param, "height": 1000})
    yield pg
    _finish(pg, request)


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
    page.click("#tabs button[data-tab=inside]")
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
    assert page.inner_text("#tracks tr >> nth=1 >> th").startswith(f"block {N_LAYER - 1} ‖x‖")   # top of the stack first
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
    assert page.locator("#chanceLine").count() == 1 and "chance 25%" in page.text_content("#primePlot")
    assert "was not trained for “mapping”" in page.inner_text("#primeNote")      # a random model: said plainly
    explain = page.inner_text("#primeExplain")
    assert "The model saw the prompt below" in explain and "the right answer is" in explain
    page.select_option("#primeMetric", "answer_logprob")
    assert "log p(gold answer)" in page.text_content("#primePlot")


def test_an_error_clears_old_results_and_the_next_success_clears_the_error(page):
    generate(page, tokens=4)
    page.fill("#max_tokens", "-1")
    page.click("#go")
    page.wait_for_selector("#err-max_tokens")             # next to the control, naming it
    assert page.inner_text("#err-max_tokens").startswith("max_tokens: ")
    assert page.evaluate("document.getElementById('max_tokens').nextElementSibling.id") == "err-max_tokens"
    assert page.inner_text("#out") == "" and page.inner_text("#stats") == ""
    generate(page, tokens=3)
    assert page.locator("#err-max_tokens").count() == 0 and page.locator("#out .tok").count() == 3


# ---- the forward pass, long prompts, legends, layout, chat (issue 27) -------------------------------------

def follow(pg, chip=None):
    """Follow the last token (or chip #chip) through the model; -> the followed position."""
    if chip is None:
        pg.click("#fpGo")
    else:
        pg.click(f"#fpChips .chip >> nth={chip}")
    want = "" if chip is None else f" && document.getElementById('fpPos').value === '{chip}'"
    pg.wait_for_function(f"document.querySelectorAll('#fpTop tr').length > 0{want}")
    return int(pg.input_value("#fpPos"))


def test_forward_pass_shows_every_stage_and_the_models_own_prediction(page, site):
    tok = Tokenizer.gpt2()
    ids = tok.encode("ROMEO:")
    with torch.inference_mode():
        logits = site.engine.model(torch.tensor([ids]))[0][0]                       # (T, V)
    for chip in (None, 1):
        i = follow(page, chip)
        assert i == (len(ids) - 1 if chip is None else chip)
        assert page.locator(".stage.embedding .vecrow").count() == 3                  # token, position, their sum
        assert "wte[%d]" % ids[i] in page.inner_text(".stage.embedding")
        attn, mlp = page.locator(".stage.block:not(.mlp)"), page.locator(".stage.mlp")
        assert attn.count() == N_LAYER and mlp.count() == N_LAYER                     # every block, both halves
        for l in range(N_LAYER):
            assert attn.nth(l).locator(".keys tr").count() == 1 + i + 1              # header + keys 0..i
            assert attn.nth(l).locator(".attn-delta").count() == 1 and mlp.nth(l).locator(".mlp-delta").count() == 1
        assert "(n_head, T, d_head) = (%d, %d, 8)" % (N_HEAD, len(ids)) in page.inner_text(".stage.block >> nth=0")
        assert page.locator(".stage.stream .resid tr").count() == 1 + 2 * N_LAYER      # the stream after each add
        top = page.locator("#fpTop tr").first.get_attribute("data-id")
        assert int(top) == int(logits[i].argmax())                                  # the model's own prediction
        assert page.locator("#fpTop tr").count() == 10
    # the last token's stage links to the step loop, which samples and appends
    follow(page)
    page.click("#fpSample")
    page.wait_for_function("document.getElementById('sstats').textContent.startsWith('step 1:')")
    assert page.locator("#stepP.on").count() == 1


def test_a_long_prompt_generates_with_the_sliding_window_and_inspects_its_last_tokens(page):
    page.fill("#prompt", " hello" * 300)                                            # 300 tokens, context 128
    page.fill("#max_tokens", "4")
    page.click("#go")
    page.wait_for_function("document.getElementById('promptErr').textContent.length > 0")
    err = page.inner_text("#promptErr")
    assert "sliding window" in err and "--sliding-window" not in err               # names the page's control
    page.check("#sliding")
    generate(page, tokens=4)
    assert "last 128 of the prompt's 300 tokens" in page.inner_text("#stats")
    assert page.locator("#out .tok").count() == 4 and page.inner_text("#promptErr") == ""
    page.click("#tabs button[data-tab=inside]")
    page.click("#inspect")
    page.wait_for_function("document.querySelectorAll('#chips .chip').length === 128")
    assert "172 earlier ones dropped" in page.inner_text("#dropped")
    page.click("#tabs button[data-tab=fwdP]")
    assert follow(page) == 127


def test_inspect_without_the_window_says_which_control_to_use(page):
    page.fill("#prompt", " hello" * 300)
    page.click("#tabs button[data-tab=tracksP]")
    page.click("#tracksGo")
    page.wait_for_function("document.getElementById('tracksErr').textContent.length > 0")
    assert "tick “sliding window”" in page.inner_text("#tracksErr") and page.inner_text("#status") == ""


def test_every_view_has_its_legend(page):
    text = {tab: page.text_content(f"#{tab} .explain") for tab in ("fwdP", "inside", "tracksP", "stepP")}
    assert "red" in text["fwdP"] and "blue" in text["fwdP"] and "d_model" in text["fwdP"]
    assert "surprisal" in text["inside"] and "first token" in text["inside"] and "\\xe2" in text["inside"]
    for word in ("Shading", "Bold", "‖x‖", "tied weights", "embedding row predicts each token itself"):
        assert word in text["tracksP"], word
    assert "gray" in text["stepP"] and "before those filters" in text["stepP"]


@pytest.mark.parametrize("sized_page", [1400, 800], indirect=True)
def test_tracks_of_a_full_context_fit_the_window(sized_page):
    pg = sized_page
    pg.fill("#prompt", " hello" * 128)
    pg.click("#tabs button[data-tab=tracksP]")
    pg.click("#tracksGo")
    pg.wait_for_function(f"document.querySelectorAll('#tracks td.cell').length === {128 * (N_LAYER + 1)}")
    sizes = pg.evaluate("""() => [document.documentElement.scrollWidth, window.innerWidth,
        ...['tracksWrap', 'tracksP'].flatMap((id) => [document.getElementById(id).scrollWidth,
                                                      document.getElementById(id).clientWidth])]""")
    page_w, inner, wrap_sw, wrap_cw, panel_sw, panel_cw = sizes
    assert page_w <= inner and wrap_sw <= wrap_cw and panel_sw <= panel_cw, sizes   # no sideways scroll
    assert pg.locator("#tracks table.seg").count() > 1                              # wrapped, rows repeated
    pg.click("#tabs button[data-tab=fwdP]")
    follow(pg)
    assert pg.evaluate("document.documentElement.scrollWidth") <= inner
    assert pg.evaluate("document.getElementById('fwdP').scrollWidth <= document.getElementById('fwdP').clientWidth")


def test_chat_mode_streams_a_reply_and_shows_the_template(page):
    page.click("#modeChat")
    assert page.locator("#prompt").is_hidden()
    page.fill("#system", "You are terse.")
    page.fill("#userMsg", "Hello there")
    page.fill("#max_tokens", "5")
    page.fill("#seed", "1")
    page.click("#send")
    page.wait_for_function("document.getElementById('chatStats').textContent.includes('+ 5 generated')")
    assert page.locator("#msgs .msg.user").count() == 1 and page.locator("#msgs .msg.assistant").count() == 1
    rendered = page.inner_text("#rendered")
    assert rendered.startswith("You are terse.\n\nUser: Hello there\n\nAssistant:")
    reply = page.inner_text("#msgs .msg.assistant")
    assert reply.startswith("assistant") and len(reply) > len("assistant")
    page.click("#modeText")
    assert page.locator("#prompt").is_visible()
