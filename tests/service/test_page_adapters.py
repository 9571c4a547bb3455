"""The web page offers each sample of an adapter job (a PEFT folder) as one zip, built in the
browser from the job's files after checking their sha256 against the manifest."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import GatewayPool
from tests.service.test_client import work
from tests.service.test_page import CHROMIUM, needs_browser, sync_playwright
from worker.registry import GeneratorCache, discover_generators


@pytest.mark.slow
@needs_browser
def test_each_adapter_sample_downloads_as_one_zip(
    redis_url: str, tiny_adapter_bundle: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    pool = GatewayPool(redis_url, [tiny_adapter_bundle], tmp_path / "data")
    live = pool.start(progress_interval_s=0.0)
    cache = GeneratorCache(discover_generators([str(tiny_adapter_bundle)]), device="cpu")
    cache.warm()
    assert sync_playwright is not None and CHROMIUM is not None
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_page(accept_downloads=True)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(live.url + "/")
                expect(page.locator("#architecture option")).to_have_count(1)
                page.fill("#num-samples", "2")
                page.select_option("#sampler", "ddim")
                page.fill("#steps", "3")
                page.click("#submit")
                expect(page.locator("#job-status")).to_have_attribute("data-status", "queued")
                work(live, cache)
                expect(page.locator("#job-status")).to_have_attribute(
                    "data-status", "succeeded", timeout=60_000
                )
                job_id = page.locator("#job-id").inner_text()
                files = httpx.get(f"{live.url}/jobs/{job_id}").json()["result"]["files"]
                rows = page.locator("#files tbody tr")
                expect(rows).to_have_count(2)  # one row per sample, not per file
                link = rows.nth(1).locator("a.zip")
                expect(link).to_have_text("sample_001.zip")
                with page.expect_download() as download:
                    link.click()
                target = tmp_path / "sample_001.zip"
                download.value.save_as(target)
                with zipfile.ZipFile(target) as archive:
                    assert archive.testzip() is None  # every CRC checks out
                    names = archive.namelist()
                    digests = {n: hashlib.sha256(archive.read(n)).hexdigest() for n in names}
                wanted = {
                    f["name"]: f["sha256"] for f in files if f["name"].startswith("sample_001/")
                }
                assert names == list(wanted) and digests == wanted
                assert errors == []
            finally:
                browser.close()
    finally:
        pool.close()
