"""The admin in a real browser: Debian's headless Chromium, driven through Selenium.

A member of staff logs in, adds two batches with the form, and, once an order line is on the
first, shrinks it so that the line must move, and sees it move on the allocations list.
Screenshots of each step are kept in tests/artifacts/admin/.

Chromium and its driver come from Debian (`apt-get install chromium chromium-driver`, which
`make test` does when they are missing). Without them this test fails; it never skips, and
Selenium Manager (which would download a browser) never runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.selenium_manager import SeleniumManager
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from allocation import models as orm
from allocation.apps import get_bus
from allocation.domain import commands

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1366,1000",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "admin"
PASSWORD = "a-long-test-password"


@contextlib.contextmanager
def chromium(profile: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    for program in (CHROMIUM, CHROMEDRIVER):
        assert os.access(program, os.X_OK), (
            f"{program} is missing: apt-get install -y chromium chromium-driver "
            "(make test installs them)"
        )

    def no_selenium_manager(*args, **kwargs):
        raise AssertionError("Selenium Manager must not run: it downloads browsers")

    monkeypatch.setattr(SeleniumManager, "binary_paths", no_selenium_manager)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class AdminPages:
    """What a person does in the admin, in a few words each."""

    def __init__(self, driver: WebDriver, base_url: str):
        self.driver = driver
        self.base_url = base_url
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def type_into(self, name: str, text: str) -> None:
        field = self.find(f'input[name="{name}"]')
        field.clear()
        field.send_keys(text)

    def submit(self, css: str) -> None:
        """Click a button and wait for the next page to load."""
        page = self.find("html")
        self.find(css).click()
        WebDriverWait(self.driver, 15).until(expected_conditions.staleness_of(page))

    def messages(self) -> list[str]:
        return [m.text for m in self.driver.find_elements(By.CSS_SELECTOR, "ul.messagelist li")]

    def screenshot(self, name: str) -> None:
        assert self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))

    def add_batch(self, ref: str, sku: str, qty: int, eta: str = "") -> None:
        self.open("/admin/allocation/batch/add/")
        for name, value in {"ref": ref, "sku": sku, "qty": str(qty), "eta": eta}.items():
            self.type_into(name, value)
        self.submit('input[type="submit"][value="Create batch"]')

    def allocations_of(self, orderid: str) -> list[tuple[str, str, str]]:
        """The order's rows on the admin's allocations list: (sku, quantity, batch)."""
        self.open(f"/admin/allocation/allocation/?q={orderid}")
        return [
            (
                row.find_element(By.CSS_SELECTOR, ".field-sku_code").text,
                row.find_element(By.CSS_SELECTOR, ".field-quantity").text,
                row.find_element(By.CSS_SELECTOR, ".field-batch_link").text,
            )
            for row in self.driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
        ]


@pytest.mark.django_db(transaction=True)
def test_staff_shrink_a_batch_and_see_the_order_line_move(
    live_server, django_user_model, tmp_path, monkeypatch
):
    django_user_model.objects.create_superuser("ops", "ops@example.com", PASSWORD)

    with chromium(tmp_path / "chromium-profile", monkeypatch) as driver:
        admin = AdminPages(driver, live_server.url)
        admin.open("/admin/login/?next=/admin/")
        admin.type_into("username", "ops")
        admin.type_into("password", PASSWORD)
        admin.submit('input[type="submit"]')
        assert admin.find("#stock-overview a").text == "Stock overview"

        admin.add_batch("WH-1", "TABLE", 10)
        assert admin.messages() == [
            "Batch WH-1 created (10 units of TABLE, in the warehouse). See its events."
        ]
        admin.screenshot("1-batch-added")
        admin.add_batch("SHIP-1", "TABLE", 10, eta="2031-01-01")
        assert "Batch SHIP-1 created" in admin.messages()[0]

        # The order system allocates a line: warehouse stock comes first.
        assert get_bus().handle(commands.Allocate("order-7", "TABLE", 8)) == "WH-1"
        assert admin.allocations_of("order-7") == [("TABLE", "8", "WH-1")]

        # Shrink WH-1 below what is allocated, with the form on the batch's page.
        admin.open("/admin/allocation/batch/?q=WH-1")
        admin.submit('#result_list a[href*="/change/"]')
        admin.type_into("qty", "5")
        admin.screenshot("2-change-quantity-form")
        admin.submit('input[type="submit"][value="Change quantity"]')
        assert admin.messages() == [
            "Batch WH-1: quantity purchased changed from 10 to 5; 1 order line no longer "
            "fitted and was sent to be reallocated. See the events."
        ]
        admin.screenshot("3-quantity-changed")

        # The message links to the chain the change started: followed by a click.
        admin.submit("ul.messagelist a")
        chain = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "td.field-event strong")]
        assert chain == ["BatchQuantityChanged", "Deallocated", "Allocated"]
        admin.screenshot("4-event-chain")

        # The line moved to the incoming batch, through Deallocated and its handler.
        assert admin.allocations_of("order-7") == [("TABLE", "8", "SHIP-1")]
        admin.screenshot("5-allocation-moved")

        admin.open("/admin/readmodels/batchstock/overview/")
        assert admin.find('tr[data-sku="TABLE"] td.num strong').text == "7"
        admin.screenshot("6-stock-overview")

    assert dict(orm.Allocation.objects.values_list("orderid", "batch__reference")) == {
        "order-7": "SHIP-1"
    }
