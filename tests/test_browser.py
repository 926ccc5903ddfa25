"""End to end in a real browser: `streamlit run` serves the dashboard on a free localhost port and
headless Chromium (Debian's package, driven by its own chromedriver; nothing is downloaded) clicks
through every page on the embedded demo model, checks the numbers against the library, and saves a
screenshot of every page (to $SHEDDER_SCREENSHOTS when set, else to a temporary folder).

Without Chromium the test skips, except when the environment variable CI is set: then it fails.
"""
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WIDTH = 1400


def _chromium_or_skip() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    if missing:
        message = f"browser test needs {', '.join(missing)} (./run.sh setup installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    _chromium_or_skip()
    folder = tmp_path_factory.mktemp("browser")
    port = _free_port()
    # a fresh cache inside the project's (git-ignored) one, so the pages show short relative paths
    (ROOT / "cache").mkdir(exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="browser-test-", dir=ROOT / "cache"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "SHEDDER_CACHE": str(cache.relative_to(ROOT))}  # the server runs in ROOT
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--client.toolbarMode", "minimal", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start:\n" + (folder / "server.log").read_text()[-3000:])
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
        shutil.rmtree(cache, ignore_errors=True)
        print("streamlit's log (end):\n" + (folder / "server.log").read_text()[-4000:])  # shown on failure


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SHEDDER_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def demo():
    """The demo model and the Playground's default calibration windows, for the expected numbers."""
    from shedder.calibration import calibration_windows
    from shedder.loading import load_model

    model, tokenizer = load_model("demo-mamba2")
    return model, calibration_windows("wiki-test", tokenizer, 256, 2048)


def expected_ppl(demo, *removed) -> str:
    from shedder.perplexity import perplexity

    model, windows = demo
    return f"{perplexity(model, windows, list(removed), batch_size=4).ppl:.3f}"


class Page:
    """One browser session on the app, with waits for what streamlit renders."""

    def __init__(self, url: str):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    f"--window-size={WIDTH},1000"):
            options.add_argument(arg)
        # the driver's path is given, so selenium never looks for (or downloads) one
        self.driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        self.driver.get(url)

    def close(self) -> None:
        self.driver.quit()

    def find(self, css: str, text: str | None = None, timeout: float = 60):
        """The first element matching ``css`` (whose text starts with ``text``), once there."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        def found(driver):
            for element in driver.find_elements(By.CSS_SELECTOR, css):
                try:
                    if text is None or element.text.strip().startswith(text):
                        return element
                except Exception:  # re-rendered while being read
                    continue
            return False

        return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(found, f"no {css} with text {text!r}")

    def idle(self, timeout: float = 120, quiet: float = 1.0) -> None:
        """Wait until the script run has finished: streamlit's running indicator stays away for ``quiet`` s."""
        from selenium.webdriver.common.by import By

        deadline, calm_since = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() - calm_since < quiet:
            if self.driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'):
                calm_since = time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError("the app is still running")
            time.sleep(0.1)

    def metric(self, label: str, timeout: float = 60) -> str:
        element = self.find('[data-testid="stMetric"]', label, timeout)
        return element.find_element("css selector", '[data-testid="stMetricValue"]').text.strip()

    def wait_metric(self, label: str, value: str, timeout: float = 60) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        def shows(_):
            try:
                return self.metric(label, timeout=1) == value
            except Exception:
                return False

        WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(shows, f"{label} never showed {value}")

    def go(self, page: str, title: str | None = None) -> None:
        self.find('[data-testid="stSidebarNavLink"]', page).click()
        self.find("h1", title or page)

    def click_button(self, label: str) -> None:
        self.find('[data-testid="stButton"] button, [data-testid="stFormSubmitButton"] button', label).click()

    def pill(self, group: str, option: str) -> None:
        from selenium.webdriver.common.by import By

        row = self.find('[data-testid="stButtonGroup"]', group)
        next(b for b in row.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == option).click()

    def slider_down(self, label: str, steps: int) -> None:
        """Move a slider ``steps`` options left with the keyboard, as a user can."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        thumb = self.find('[data-testid="stSlider"]', label).find_element("css selector", 'input[type="range"]')
        self.driver.execute_script("arguments[0].focus()", thumb)
        ActionChains(self.driver).send_keys(*[Keys.ARROW_LEFT] * steps).perform()

    def add_option(self, label: str, option: str) -> None:
        """Add ``option`` to the multiselect labelled ``label``."""
        self.find('[data-testid="stMultiSelect"]', label).find_element("css selector", "input").click()
        self.find('[role="option"]', option).click()

    def choose(self, label: str, option: str) -> None:
        """Pick ``option`` in the select box labelled ``label``."""
        self.find('[data-testid="stSelectbox"]', label).find_element("css selector", '[role="combobox"], input').click()
        self.find('[role="option"]', option).click()

    def type_number(self, label: str, value: int) -> None:
        from selenium.webdriver.common.keys import Keys

        field = self.find('[data-testid="stNumberInput"]', label).find_element("css selector", "input")
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(value), Keys.ENTER)

    def screenshot(self, path: Path) -> None:
        """The whole page (the window grown to the content's height), as a compact PNG."""
        from PIL import Image

        height = self.driver.execute_script(
            "return document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight")
        self.driver.set_window_size(WIDTH, min(max(int(height) + 120, 800), 4000))
        time.sleep(1.0)  # let plotly re-layout to the new size
        self.driver.save_screenshot(str(path))
        image = Image.open(path).convert("RGB")
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        self.driver.set_window_size(WIDTH, 1000)


def sensitivity_of(page: Page, path: Path, more_kinds: tuple[str, ...] = ()) -> None:
    """Compute the Sensitivity page's leave-one-out scores (its default kinds plus ``more_kinds``), screenshot."""
    page.go("Sensitivity")  # on the evaluation setting of every page: the Model page's windows, already cut
    page.idle()
    for kind in more_kinds:
        page.add_option("Components", kind)
        page.idle()
    page.click_button("Compute")
    page.find("h3", "Least important first", timeout=600)
    page.idle()
    page.screenshot(path)


def search_and_save(page: Page, path: Path, calibration: str | None = None) -> None:
    """A two-step search on 1,024 calibration tokens, its last step saved as a named plan, screenshot."""
    page.go("Search")
    page.type_number("Steps", 2)
    page.idle()
    if calibration:
        page.choose("Calibration text", calibration)
        page.idle()
    page.slider_down("Tokens", 2)  # 4096 -> 1024 tokens: a quick search
    page.idle()
    page.click_button("Run search")
    page.find("h3", "Results", timeout=300)
    page.idle()
    assert page.metric("components removed") == "2"
    page.click_button("Save plan")
    page.find('[data-testid="stAlert"]', "Saved as")
    page.idle()
    page.screenshot(path)


@pytest.fixture
def page(app_url):
    opened = Page(app_url)
    yield opened
    opened.close()


def test_every_page_in_the_browser(page, demo, shots):
    page.find("h1", "Mamba-Shedder in a minute", timeout=120)  # the dashboard opens on the method
    page.go("Model")
    page.metric("perplexity", timeout=120)
    assert page.metric("architecture") == "mamba2" and page.metric("layers") == "12"
    page.idle()
    page.screenshot(shots / "model.png")

    page.go("How it works", "Mamba-Shedder in a minute")
    page.idle()
    page.screenshot(shots / "method.png")

    sensitivity_of(page, shots / "sensitivity.png")

    page.go("Playground")
    assert page.metric("perplexity") == expected_ppl(demo)
    page.pill("ssm:", "3")
    page.wait_metric("components removed", "1")
    page.idle()
    from shedder.catalogue import Component
    assert page.metric("perplexity") == expected_ppl(demo, Component("ssm", 3))
    page.pill("block:", "10")
    page.wait_metric("components removed", "2")
    page.idle()
    assert page.metric("perplexity") == expected_ppl(demo, Component("ssm", 3), Component("block", 10))
    page.click_button("Measure latency")
    page.metric("speedup", timeout=300)  # 21 timed pairs, slower on a busy machine
    page.click_button("Generate")
    page.find('[data-testid="stMarkdownContainer"] p', "with 2 removed", timeout=120)
    page.idle()
    page.screenshot(shots / "playground.png")

    search_and_save(page, shots / "search.png", "wiki-test")

    page.go("Export & compare")
    page.find('[data-testid="stDataFrame"]', timeout=60)  # the saved search step, compared with dense
    page.click_button("Extract")
    page.find('[data-testid="stAlert"]', "Wrote", timeout=120)
    page.idle()
    page.screenshot(shots / "export.png")

    page.go("Recovery")  # offers the model just extracted
    page.idle()
    page.screenshot(shots / "recover.png")
    assert {p.name for p in shots.glob("*.png")} >= {"model.png", "method.png", "sensitivity.png", "playground.png",
                                                     "search.png", "export.png", "recover.png"}


def test_every_page_on_the_hybrid(page, shots):
    """demo-hybrid (Mamba-2 layers with attention at 2 and 5) through every page, with a plan that removes
    parts, so that the strip and the heatmaps show it; screenshots under hybrid/."""
    folder = shots / "hybrid"
    folder.mkdir(exist_ok=True)
    page.find("h1", "Mamba-Shedder in a minute", timeout=120)
    page.go("Model")
    page.metric("perplexity", timeout=120)
    page.idle()
    page.choose("Zoo model", "demo-hybrid")
    page.find('[data-testid="stMetricValue"]', "bamba", timeout=180)
    page.idle()
    page.slider_down("Evaluation tokens", 1)  # 1,024 tokens for every page: a quicker sensitivity of 144 parts
    page.find('[data-testid="stCaptionContainer"]', "On wiki-test, 1,024 tokens, windows of 256", timeout=120)
    page.idle()

    page.go("Playground")
    page.metric("perplexity", timeout=120)
    page.pill("attn:", "2")
    page.wait_metric("components removed", "1")
    page.idle()
    page.pill("mlp:", "6")
    page.wait_metric("components removed", "2")
    page.idle()
    page.add_option("Heads and MLP channel groups", "ssm_heads@0[3]")
    page.wait_metric("components removed", "3")
    page.idle()
    page.click_button("Measure latency")
    page.metric("speedup", timeout=300)
    page.idle()
    page.type_number("Documents per task", 10)  # a quick look, labelled rough
    page.idle()
    page.click_button("Evaluate accuracy")
    page.metric("average accuracy", timeout=300)
    page.idle()
    page.screenshot(folder / "playground.png")

    page.go("Model")
    page.metric("perplexity", timeout=120)
    page.idle()
    page.screenshot(folder / "model.png")

    page.go("How it works", "Mamba-Shedder in a minute")  # the anatomy of each distinct layer of the hybrid
    page.idle()
    page.screenshot(folder / "method.png")

    sensitivity_of(page, folder / "sensitivity.png", ("ssm_heads", "attn_heads", "mlp_channels"))
    search_and_save(page, folder / "search.png")  # on its own calibration text, wiki

    page.go("Export & compare")
    page.find('[data-testid="stDataFrame"]', timeout=60)
    page.idle()
    page.screenshot(folder / "export.png")

    page.go("Recovery")
    page.idle()
    page.screenshot(folder / "recover.png")
    assert {p.name for p in folder.glob("*.png")} >= {"model.png", "method.png", "sensitivity.png", "playground.png",
                                                      "search.png", "export.png", "recover.png"}


def test_two_sessions_never_see_each_others_masks(app_url, demo):
    from shedder.catalogue import Component

    first, second = Page(app_url), Page(app_url)
    try:
        for session in (first, second):
            session.go("Playground")
            session.metric("perplexity")
            session.idle()
        # both toggle at once; each session's perplexity must be that of its own plan alone
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda job: job[0].pill(*job[1]), [(first, ("ssm:", "7")), (second, ("block:", "4"))]))
        for session in (first, second):
            session.wait_metric("components removed", "1")
            session.idle()
        assert first.metric("perplexity") == expected_ppl(demo, Component("ssm", 7))
        assert second.metric("perplexity") == expected_ppl(demo, Component("block", 4))
    finally:
        first.close()
        second.close()
