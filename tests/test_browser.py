"""The pages in a real browser (issue 16): headless Debian Chromium, driven by Selenium, over real Gunicorn.

The demo page's bars must be the probabilities the API gives for the same input (within 1 %),
its zero-shot ranking the API's, its errors the API's messages next to their field; ``/docs``
must execute a call. Needs Debian's ``chromium`` and ``chromium-driver`` (``make test-services``
installs them). ``SAVE_SCREENSHOTS=1`` writes the screenshots to docs/images/ (the README
shows them), otherwise to a temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from serving import GUNICORN, PROJECT_ROOT, service_env

WINDOW = (1280, 1000)
TOLERANCE = 0.01  # a bar's width, as a fraction of its track, against the API's probability
PAIR = {"premise": "A woman is slicing tomatoes in a kitchen.", "hypothesis": "Someone is preparing food."}
ZERO_SHOT = {
    "text": "The match went to penalties after a goalless draw.",
    "labels": ["technology", "sports", "politics", "cooking"],
    "hypothesis_template": "This example is about {}.",
}
# Each bar's label, its fill's width as a fraction of its track, and the percentage it shows.
MEASURE_BARS = """
return Array.from(arguments[0].querySelectorAll('.bar-row')).map((row) => [
  row.dataset.label,
  row.querySelector('.bar-fill').getBoundingClientRect().width
    / row.querySelector('.bar-track').getBoundingClientRect().width,
  row.querySelector('.bar-value').textContent,
]);
"""


def _chromium() -> WebDriver:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        raise RuntimeError("chromium is not installed: apt-get install chromium chromium-driver (make test-services)")
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)  # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = _chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        folder = PROJECT_ROOT / "docs" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def pictured(screenshots: Path, tiny_server, module_services, tmp_path_factory: pytest.TempPathFactory):
    """The server the screenshots show: for the README the bundled model, whose answers mean something."""
    if screenshots != PROJECT_ROOT / "docs" / "images":
        yield tiny_server
        return
    env = service_env(NLI_MODEL="bundled", NLI_WORKERS=1, NLI_LOG_DIR=tmp_path_factory.mktemp("logs"))
    with module_services.running(GUNICORN, env) as service:
        yield service


def full_page_screenshot(browser: WebDriver, path: Path, most: int = 2400) -> None:
    """The page from its top, ``most`` pixels high at most."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    try:
        browser.set_window_size(WINDOW[0], min(height, most) + 140)  # the window has chrome of its own
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(path))
    finally:
        browser.set_window_size(*WINDOW)
    assert path.stat().st_size > 10_000


def wait(browser: WebDriver, condition: Callable[[WebDriver], Any], seconds: float = 15) -> Any:
    return WebDriverWait(browser, seconds).until(condition)


def fill(browser: WebDriver, element_id: str, text: str) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def open_demo(browser: WebDriver, url: str) -> None:
    browser.get(f"{url}/")
    wait(browser, lambda b: b.find_elements(By.ID, "model-id") or b.find_element(By.ID, "key-section").is_displayed())


def submit(browser: WebDriver, form_id: str) -> None:
    browser.find_element(By.CSS_SELECTOR, f"#{form_id} button[type=submit]").click()


def bars(browser: WebDriver, result: WebElement) -> list[tuple[str, float, str]]:
    return [tuple(row) for row in browser.execute_script(MEASURE_BARS, result)]


def assert_bars_match(measured: list[tuple[str, float, str]], probabilities: dict[str, float]) -> None:
    assert {label for label, _, _ in measured} == set(probabilities)
    for label, width, shown in measured:
        assert abs(width - probabilities[label]) <= TOLERANCE, f"{label}: bar {width:.4f}, API {probabilities[label]}"
        assert shown == f"{probabilities[label] * 100:.1f} %", label


def csp_violations(browser: WebDriver) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]]


def test_the_pair_form_draws_the_apis_probabilities_as_bars(browser, tiny_server) -> None:
    open_demo(browser, tiny_server.url)
    described = requests.get(f"{tiny_server.url}/model", timeout=10).json()
    assert browser.find_element(By.ID, "model-id").text == described["id"]
    assert not browser.find_elements(By.ID, "fallback-badge")
    fill(browser, "premise", PAIR["premise"])
    fill(browser, "hypothesis", PAIR["hypothesis"])
    submit(browser, "pair-form")
    result = browser.find_element(By.ID, "pair-result")
    wait(browser, lambda _: len(result.find_elements(By.CLASS_NAME, "bar-row")) == 3)

    api = requests.post(f"{tiny_server.url}/predict", json=PAIR, timeout=10).json()
    assert browser.find_element(By.ID, "pair-label").text == api["label"]
    assert_bars_match(bars(browser, result), api["scores"])
    assert re.fullmatch(r"answered in \d+ ms by .+", result.find_element(By.CLASS_NAME, "latency").text)
    assert csp_violations(browser) == []


@pytest.mark.parametrize("multi_label", [False, True])
def test_the_zero_shot_form_ranks_labels_in_the_apis_order(browser, tiny_server, multi_label) -> None:
    open_demo(browser, tiny_server.url)
    fill(browser, "zs-text", ZERO_SHOT["text"])
    fill(browser, "zs-labels", ", ".join(ZERO_SHOT["labels"]))
    fill(browser, "zs-template", ZERO_SHOT["hypothesis_template"])
    switch = browser.find_element(By.ID, "zs-multi")
    if switch.is_selected() != multi_label:
        switch.send_keys(" ")  # by keyboard
    submit(browser, "zs-form")
    result = browser.find_element(By.ID, "zs-result")
    wait(browser, lambda _: len(result.find_elements(By.CLASS_NAME, "bar-row")) == len(ZERO_SHOT["labels"]))

    api = requests.post(f"{tiny_server.url}/zero-shot", json={**ZERO_SHOT, "multi_label": multi_label}, timeout=10)
    ranked = api.json()
    measured = bars(browser, result)
    assert [label for label, _, _ in measured] == ranked["labels"]
    assert_bars_match(measured, dict(zip(ranked["labels"], ranked["scores"], strict=True)))


def test_an_empty_premise_shows_the_apis_400_message_next_to_the_field(browser, tiny_server) -> None:
    open_demo(browser, tiny_server.url)
    fill(browser, "premise", " ")
    fill(browser, "hypothesis", PAIR["hypothesis"])
    submit(browser, "pair-form")
    error = browser.find_element(By.ID, "premise-error")
    wait(browser, lambda _: error.text)

    api = requests.post(f"{tiny_server.url}/predict", json={**PAIR, "premise": " "}, timeout=10)
    assert api.status_code == 400
    assert error.text == api.json()["error"]
    assert browser.find_element(By.ID, "premise").get_attribute("aria-invalid") == "true"
    assert browser.switch_to.active_element.get_attribute("id") == "premise"
    assert browser.find_element(By.ID, "hypothesis-error").text == ""
    assert browser.find_element(By.ID, "pair-result").find_elements(By.CLASS_NAME, "bar-row") == []


def test_the_document_form_shows_each_claims_label_bars_and_evidence_as_the_api_does(browser, tiny_server) -> None:
    document = "A man is playing a guitar. Two dogs are running."  # each sentence, and both: 3 windows x 1 claim
    claims = ["The dogs are sleeping."]  # the server takes 4 pairs per request
    open_demo(browser, tiny_server.url)
    fill(browser, "verify-document", document)
    fill(browser, "verify-claims", "\n".join(claims))
    submit(browser, "verify-form")
    result = browser.find_element(By.ID, "verify-result")
    wait(browser, lambda _: len(result.find_elements(By.CLASS_NAME, "claim")) == 1)

    api = requests.post(f"{tiny_server.url}/verify", json={"document": document, "claims": claims}, timeout=10).json()
    for shown, expected in zip(result.find_elements(By.CLASS_NAME, "claim"), api["results"], strict=True):
        assert shown.find_element(By.CLASS_NAME, "answer").text == expected["label"]
        assert_bars_match(bars(browser, shown), expected["scores"])
        evidence = shown.find_element(By.CLASS_NAME, "evidence")
        assert evidence.text == expected["evidence"]["text"]
        assert int(evidence.get_attribute("data-start")) == expected["evidence"]["start"]
    assert f"read in {api['windows']} windows" in result.text
    assert csp_violations(browser) == []


def test_the_batch_box_takes_csv_and_jsonl_up_to_max_pairs_and_offers_the_results(browser, tiny_server) -> None:
    open_demo(browser, tiny_server.url)
    rows = [(PAIR["premise"], PAIR["hypothesis"]), ("A dog sleeps, curled up.", 'The "dog" is running.')]
    csv = "premise,hypothesis\n" + "\n".join(f'"{p}","{h.replace(chr(34), chr(34) * 2)}"' for p, h in rows)
    fill(browser, "batch-input", csv)
    submit(browser, "batch-form")
    result = browser.find_element(By.ID, "batch-result")
    wait(browser, lambda _: len(result.find_elements(By.CSS_SELECTOR, "tr[data-row]")) == 2)

    pairs = [{"premise": p, "hypothesis": h} for p, h in rows]
    api = requests.post(f"{tiny_server.url}/batch-predict", json={"pairs": pairs}, timeout=10).json()["results"]
    for row, expected in zip(result.find_elements(By.CSS_SELECTOR, "tr[data-row]"), api, strict=True):
        assert row.find_element(By.CLASS_NAME, "row-label").text == expected["label"]
        assert_bars_match(bars(browser, row), expected["scores"])
    assert result.find_element(By.CSS_SELECTOR, "tr[data-row='1'] td:nth-child(3)").text == rows[1][1]
    download = browser.find_element(By.ID, "batch-download")
    assert download.get_attribute("download") == "nli-results.jsonl"
    assert download.get_attribute("href").startswith("blob:")

    # JSON lines, one more than the server's max_pairs (4): refused on the page, next to the box
    fill(browser, "batch-input", "\n".join(f'{{"premise": "p{i}", "hypothesis": "h{i}"}}' for i in range(5)))
    submit(browser, "batch-form")
    error = browser.find_element(By.ID, "batch-input-error")
    wait(browser, lambda _: error.text)
    assert error.text == "5 pairs: this server takes at most 4 a request"
    # an error from the API names the line of the box
    fill(browser, "batch-input", '{"premise": "a", "hypothesis": "b"}\n\n{"premise": "", "hypothesis": "b"}')
    submit(browser, "batch-form")
    wait(browser, lambda _: error.text.startswith("line 3:"))
    assert error.text == "line 3: premise must not be empty or only whitespace"


def test_the_pair_form_works_from_the_keyboard(browser, tiny_server) -> None:
    open_demo(browser, tiny_server.url)
    for _ in range(10):  # Tab from the top of the page: the API docs link, then the premise
        if browser.switch_to.active_element.get_attribute("id") == "premise":
            break
        ActionChains(browser).send_keys(Keys.TAB).perform()
    premise = browser.switch_to.active_element
    assert premise.get_attribute("id") == "premise"
    premise.send_keys(Keys.CONTROL, "a")
    premise.send_keys("A child is laughing.", Keys.TAB)
    hypothesis = browser.switch_to.active_element
    assert hypothesis.get_attribute("id") == "hypothesis"
    hypothesis.send_keys(Keys.CONTROL, "a")
    hypothesis.send_keys("Someone is happy.", Keys.CONTROL, Keys.ENTER)  # Ctrl+Enter submits
    result = browser.find_element(By.ID, "pair-result")
    wait(browser, lambda _: len(result.find_elements(By.CLASS_NAME, "bar-row")) == 3)
    api = requests.post(
        f"{tiny_server.url}/predict",
        json={"premise": "A child is laughing.", "hypothesis": "Someone is happy."},
        timeout=10,
    )
    assert_bars_match(bars(browser, result), api.json()["scores"])


def test_the_fallback_model_is_marked(browser, tiny_server) -> None:
    open_demo(browser, tiny_server.url)
    described = requests.get(f"{tiny_server.url}/model", timeout=10).json()
    browser.execute_script("showModel(arguments[0])", {**described, "fallback": True, "requested_model": "x/y"})
    badge = browser.find_element(By.ID, "fallback-badge")
    assert badge.is_displayed() and badge.text == "fallback model"
    assert "x/y could not be loaded" in browser.find_element(By.ID, "model-info").text


def test_the_page_fits_a_phone_sized_screen(browser, tiny_server) -> None:
    open_demo(browser, tiny_server.url)
    try:
        browser.set_window_size(390, 844)
        fill(browser, "batch-input", f"{PAIR['premise']},{PAIR['hypothesis']}")
        submit(browser, "batch-form")
        wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#batch-result tr[data-row]"))
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
    finally:
        browser.set_window_size(*WINDOW)


def test_screenshot_of_the_demo_page(browser, pictured, screenshots) -> None:
    open_demo(browser, pictured.url)
    for form, result in (("pair-form", "pair-result"), ("zs-form", "zs-result"), ("batch-form", "batch-result")):
        submit(browser, form)  # the page's own examples
        wait(browser, lambda b, result=result: b.find_element(By.ID, result).find_elements(By.CLASS_NAME, "bar-row"))
    full_page_screenshot(browser, screenshots / "demo.png")


def test_docs_executes_a_call_with_try_it_out(browser, pictured, screenshots) -> None:
    browser.get(f"{pictured.url}/docs")
    operation = wait(browser, lambda b: b.find_element(By.ID, "operations-default-health"))
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    wait(browser, lambda _: operation.find_element(By.CSS_SELECTOR, "button.try-out__btn")).click()
    wait(browser, lambda _: operation.find_element(By.CSS_SELECTOR, "button.execute")).click()
    response = wait(browser, lambda _: operation.find_element(By.CSS_SELECTOR, ".live-responses-table tr.response"))
    assert response.find_element(By.CLASS_NAME, "response-col_status").text.strip() == "200"
    body = response.find_element(By.CLASS_NAME, "response-col_description").text
    assert '"status": "ok"' in body
    assert csp_violations(browser) == []
    full_page_screenshot(browser, screenshots / "docs.png", most=1700)  # down to the response


def test_with_api_keys_the_page_asks_for_one_and_keeps_it_in_memory_only(browser, model_dir, services, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("alice:alice-5f0c2d8e9b1a4c7d\n")
    env = service_env(NLI_MODEL=model_dir, NLI_WORKERS=1, NLI_API_KEYS_FILE=keys, NLI_LOG_DIR=tmp_path / "logs")
    with services.running(GUNICORN, env) as server:
        open_demo(browser, server.url)
        assert browser.find_element(By.ID, "key-section").is_displayed()
        assert browser.switch_to.active_element.get_attribute("id") == "api-key"
        fill(browser, "api-key", "wrong-key")
        submit(browser, "key-form")
        error = browser.find_element(By.ID, "api-key-error")
        wait(browser, lambda _: error.text)
        assert error.text == "the API key is not valid"

        fill(browser, "api-key", "alice-5f0c2d8e9b1a4c7d")
        submit(browser, "key-form")
        wait(browser, lambda b: b.find_elements(By.ID, "model-id"))
        assert not browser.find_element(By.ID, "key-section").is_displayed()
        submit(browser, "pair-form")
        wait(browser, lambda b: b.find_element(By.ID, "pair-result").find_elements(By.CLASS_NAME, "bar-row"))
        stored = browser.execute_script(
            "return [localStorage.length, sessionStorage.length, document.cookie, "
            "document.getElementById('api-key').value]"
        )
        assert stored == [0, 0, "", ""]
        browser.refresh()  # memory only: a reload forgets the key
        wait(browser, lambda b: b.find_element(By.ID, "key-section").is_displayed())
