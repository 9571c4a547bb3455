"""The web page at `/`, in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright submits a job to a real gateway and worker, watches it finish and sees its files.

Skipped, with the reason, when Playwright or a Chromium executable is missing; CI installs
both (`.ci/run`). Set RPG_PAGE_SCREENSHOT=path.png to keep a screenshot of the finished page.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.auth import new_key
from tests.service.conftest import SECRET, GatewayPool, LiveGateway, assert_problem

CHROMIUM = next(
    (
        found
        for name in (os.environ.get("RPG_CHROMIUM", ""), "chromium", "chromium-browser")
        if name and (found := shutil.which(name))
    ),
    None,
)

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

needs_browser = pytest.mark.skipif(
    sync_playwright is None or CHROMIUM is None,
    reason="needs Playwright (pip install playwright) and a Chromium executable "
    "(apt-get install chromium, or RPG_CHROMIUM=/path/to/chrome); no browser is downloaded",
)


def test_page_and_its_static_files_are_served(gateway: LiveGateway) -> None:
    page = gateway.http.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text
    script = gateway.http.get("/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/jobs/${encodeURIComponent(jobId)}/events" in script.text
    assert gateway.http.get("/static/style.css").status_code == 200
    for name in ("../app.py", "nope.js", "%2e%2e%2fapp.py"):
        assert gateway.http.get(f"/static/{name}").status_code == 404


@pytest.mark.parametrize(
    "accept", [None, "*/*", "text/*", "application/json;q=0.9, text/html;q=0.1"]
)
def test_curl_gets_the_page(gateway: LiveGateway, accept: str | None) -> None:
    # curl sends Accept: */*; a client that sends no Accept admits everything (RFC 9110)
    headers = {} if accept is None else {"Accept": accept}
    request = gateway.http.build_request("GET", "/", headers=headers)
    if accept is None:
        del request.headers["Accept"]
    page = gateway.http.send(request)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>" in page.text


@pytest.mark.parametrize("accept", ["application/json", "text/html;q=0, application/json"])
def test_a_client_that_refuses_html_is_told_where_the_page_is(
    gateway: LiveGateway, accept: str
) -> None:
    response = gateway.http.get("/", headers={"Accept": accept})
    problem = assert_problem(response, 404)
    assert f"open {gateway.url}/ in a browser" in problem["detail"]
    assert f"{gateway.url}/docs" in problem["detail"]


@pytest.fixture
def live_service(
    redis_url: str, tiny_bundle: Path, tmp_path: Path
) -> Iterator[tuple[LiveGateway, str]]:
    """A gateway with an API key and a worker process, both serving `tiny_bundle`."""
    key, entry = new_key("browser")
    pool = GatewayPool(redis_url, [tiny_bundle], tmp_path / "data")
    live = pool.start(api_key_hashes=[entry], progress_interval_s=0.0, job_timeout_s=120)
    env = {
        **os.environ,
        "RPG_REDIS_URL": redis_url,
        "RPG_GENERATORS": str(tiny_bundle),
        "RPG_DATA_DIR": str(tmp_path / "data"),
        "RPG_SIGNING_SECRET": SECRET,
        "RPG_PUBLIC_BASE_URL": live.url,
        "RPG_PROGRESS_INTERVAL_S": "0",
        "RPG_HEARTBEAT_INTERVAL_S": "0.5",
        "RPG_WORKER_CPU_THREADS": "1",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--device", "cpu"], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{live.url}/readyz").status_code != 200:  # a worker is alive
            assert worker.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the worker did not start within 60 s"
            time.sleep(0.2)
        yield live, key
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        pool.close()


@pytest.mark.slow
@needs_browser
def test_browser_submits_a_job_and_sees_it_finish(live_service: tuple[LiveGateway, str]) -> None:
    live, key = live_service
    assert sync_playwright is not None and CHROMIUM is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page: Page = browser.new_page(viewport={"width": 1100, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(live.url + "/")
            # Without the key the API answers 401 and the page says so.
            expect(page.locator("#key-state")).to_contain_text("API key")
            page.fill("#api-key", key)
            page.click("#key-form button")
            expect(page.locator("#architecture option")).to_have_count(1)
            assert page.evaluate("localStorage.getItem('rpg.apiKey')") == key

            page.fill("#num-samples", "2")
            page.fill("#seed", "3")
            page.select_option("#sampler", "ddim")
            page.fill("#steps", "4")
            page.click("#submit")
            status = page.locator("#job-status")
            expect(status).to_have_attribute("data-status", "succeeded", timeout=90_000)
            job_id = page.locator("#job-id").inner_text()

            job = httpx.get(
                f"{live.url}/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}
            ).json()
            assert job["request"]["seed"] == 3 and job["request"]["steps"] == 4
            rows = page.locator("#files tbody tr")
            expect(rows).to_have_count(2)
            shown = [rows.nth(i).locator("code").inner_text() for i in range(2)]
            assert shown == [f["sha256"] for f in job["result"]["files"]]
            href = rows.nth(0).locator("a").get_attribute("href")
            assert href is not None and httpx.get(href).status_code == 200
            expect(page.locator("#job-transport")).to_have_text("(live)")  # the event stream
            row = page.locator(f"#jobs tbody tr[data-job='{job_id}']")  # recent jobs: GET /jobs
            expect(row).to_contain_text("succeeded")
            if os.environ.get("RPG_PAGE_SCREENSHOT"):
                page.screenshot(path=os.environ["RPG_PAGE_SCREENSHOT"], full_page=True)
            # The key survives a reload (kept in the browser).
            page.reload()
            expect(page.locator("#api-key")).to_have_value(key)
            # Delete from the list: the job and its files are gone.
            page.locator(f"#jobs tbody tr[data-job='{job_id}'] button").click()
            expect(page.locator(f"#jobs tbody tr[data-job='{job_id}']")).to_have_count(0)
            assert httpx.get(href).status_code == 404
            assert errors == []
        finally:
            browser.close()


@needs_browser
def test_browser_sets_a_task_by_its_classes(gateway: LiveGateway) -> None:
    # Config-only generators: the job is queued, never run; the request shows the task.
    assert sync_playwright is not None and CHROMIUM is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(gateway.url + "/")
            page.select_option("#architecture", "digits-cond")
            expect(page.locator("#class-boxes input")).to_have_count(10)
            page.check("#class-boxes input[value='0']")
            page.check("#class-boxes input[value='3']")
            page.select_option("#sampler", "ddpm")
            expect(page.locator("#steps")).to_be_disabled()
            page.click("#submit")
            expect(page.locator("#job-status")).to_have_attribute("data-status", "queued")
            job_id = page.locator("#job-id").inner_text()
            request = gateway.http.get(f"/jobs/{job_id}").json()["request"]
            assert request["task_embedding"] == [1.0, 0, 0, 1.0, 0, 0, 0, 0, 0, 0]
            assert request["sampler"] == "ddpm"
            # A wrong embedding is refused by the API and the page shows why.
            page.fill("#task-embedding", "[1, 2]")
            page.click("#submit")
            expect(page.locator("#form-error")).to_contain_text("task_embedding")
        finally:
            browser.close()
