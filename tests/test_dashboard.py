"""``corral ui`` in a real browser: Debian's chromium, headless, driven through Selenium and
Debian's chromium-driver. The job list, a running 2 x 2 job's page with its 4 ranks, its logs
followed as lines arrive, cancel from the page; and no token, no answer. One screenshot of
the job page is kept in test-artifacts/."""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PROGRAMS, REPO, require
from corral.api import submit
from corral.spec import JobSpec, JobState
from corral.ui.server import DashboardServer

ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
def dashboard() -> Iterator[DashboardServer]:
    server = DashboardServer("127.0.0.1", 0)
    server.serve_in_thread()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    require(bool(chromium and driver_path),
            "no chromium/chromedriver: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_requests_without_the_token_are_refused(dashboard: DashboardServer) -> None:
    assert dashboard.server_address[0] == "127.0.0.1"
    base = dashboard.url.split("?")[0]
    for path in ("", "api/jobs", "app.js"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path, timeout=10)
        assert refused.value.code == 403
    wrong = base + "api/jobs?token=" + "x" * len(dashboard.token)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(wrong, timeout=10)
    with urllib.request.urlopen(dashboard.url.replace("/?", "/api/jobs?"), timeout=10) as ok:
        assert ok.status == 200


def test_list_job_page_ranks_live_logs_and_cancel(dashboard: DashboardServer,
                                                  browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    spec = JobSpec(name="ticker", entrypoint={"kind": "script",
                                              "path": str(PROGRAMS / "ticker.py")},
                   nodes=2, procs_per_node=2, workdir=str(PROGRAMS))
    job = submit(spec)
    from selenium.common.exceptions import StaleElementReferenceException

    # The page redraws its tables every second: read them in one script, click with retries.
    wait = WebDriverWait(browser, 60, poll_frequency=0.2,
                         ignored_exceptions=[StaleElementReferenceException])

    def rows(selector: str) -> list[str]:
        return list(browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(r => r.innerText)",
            selector))

    browser.get(dashboard.url)
    job_row = f"tr[data-job='{job.job_id}']"
    wait.until(lambda d: any("ticker" in text for text in rows(job_row)))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, job_row).click() or True)
    wait.until(lambda d: len(rows("#ranks tr.rank")) == 4)
    wait.until(lambda d: d.find_element(By.ID, "job-state").text == "RUNNING")
    ranks = [text.split() for text in rows("#ranks tr.rank")]
    assert [r[0] for r in ranks] == ["0", "1", "2", "3"] and [r[1] for r in ranks] == [
        "0", "0", "1", "1"]

    def log_lines() -> list[str]:
        return [x for x in browser.find_element(By.ID, "logs").text.splitlines() if "tick" in x]

    wait.until(lambda d: len(log_lines()) >= 8)
    seen = len(log_lines())
    wait.until(lambda d: len(log_lines()) >= seen + 8)  # lines keep arriving: followed
    lines = log_lines()
    assert any(line.startswith("[n1 r3] rank 3 tick") for line in lines)
    assert len(lines) == len(set(lines)), "a log line was shown twice"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-job.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    browser.find_element(By.ID, "cancel").click()
    wait.until(lambda d: d.find_element(By.ID, "job-state").text == "CANCELLED")
    assert job.status().state is JobState.CANCELLED
    browser.get(dashboard.url)
    wait.until(lambda d: any("CANCELLED" in text for text in rows(job_row)))
    assert Path(shot).exists()
