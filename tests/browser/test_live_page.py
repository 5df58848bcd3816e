"""The live page of `neurograph serve` in a real headless Chromium (Debian's
chromium and chromium-driver, driven by Selenium): it loads without console
errors, points are drawn, the tick shown advances, and the query box answers.

Run: NEUROGRAPH_BIN=target/debug/neurograph python -m pytest tests/browser
"""

import os
import shutil
import subprocess
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

BIN = os.environ.get("NEUROGRAPH_BIN", "target/debug/neurograph")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "browser-test-token-0123456789"


@pytest.fixture()
def server():
    p = subprocess.Popen(
        [BIN, "serve", "--listen", "127.0.0.1:0", "--scenario", "clusters",
         "--tokens", "2000", "--rate", "30"],
        stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, NEUROGRAPH_LOG="error", NEUROGRAPH_AUTH_TOKEN=TOKEN),
    )
    line = p.stdout.readline().strip()
    assert line.startswith("listening on http://"), line
    yield line.removeprefix("listening on ")
    p.terminate()
    p.wait(timeout=60)


@pytest.fixture()
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--window-size=1200,900"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Debian's driver, not a download (Selenium Manager is not asked).
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    yield driver
    driver.quit()


def wait_for(cond, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_the_page_shows_the_world_moving(server, browser):
    browser.get(f"{server}/#token={TOKEN}")
    wait_for(lambda: browser.execute_script("return window.neurograph.frames") >= 2)
    drawn = browser.execute_script("return window.neurograph.pointsDrawn")
    assert drawn == 2000, drawn
    # Non-black pixels on the canvas: the points really were painted.
    lit = browser.execute_script("""
        const c = document.getElementById('view');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 0) n++;
        return n;""")
    assert lit > 500, lit
    first = int(browser.find_element(By.ID, "tick").text)
    wait_for(lambda: int(browser.find_element(By.ID, "tick").text) > first + 10)
    assert int(browser.find_element(By.ID, "tokens").text) == 2000
    assert browser.find_element(By.ID, "groups").text not in ("", "–")
    float(browser.find_element(By.ID, "tps").text)

    # The query box: 10 nearest tokens of the origin.
    browser.find_element(By.CSS_SELECTOR, "#query button").click()
    rows = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#results tbody tr"))
    assert len(rows) == 10
    # A bad query is shown, not thrown.
    box = browser.find_element(By.ID, "point")
    box.clear()
    box.send_keys("1 2 3")
    browser.find_element(By.CSS_SELECTOR, "#query button").click()
    msg = wait_for(lambda: browser.find_element(By.ID, "error").text)
    assert "exactly 8" in msg, msg

    # Pause from the page: the tick shown stops.
    browser.find_element(By.ID, "pause").click()
    wait_for(lambda: browser.find_element(By.ID, "state").text == "paused")
    held = browser.find_element(By.ID, "tick").text
    time.sleep(1.0)
    assert browser.find_element(By.ID, "tick").text == held

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    # The bad query above answered 422: the console notes the failed fetch;
    # nothing else may be an error.
    unexpected = [e for e in errors if "422" not in e["message"]]
    assert unexpected == [], unexpected
