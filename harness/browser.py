"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium: log in
to a real Label Studio and look at a task's labeling view as an annotator would."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium(width: int = 1400, height: int = 1000):
    """A headless Chromium that reaches nothing but loopback (the machine's network is closed)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        raise RuntimeError("install Debian's chromium and chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="clinie-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.profile_dir = profile
    return driver


def wait(driver, script: str, timeout: float = 60) -> Any:
    """Run ``script`` (a JavaScript expression) until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := driver.execute_script(f"return {script}"):
            return value
        time.sleep(0.5)
    raise TimeoutError(f"the page never satisfied: {script}")


def screenshot_task(label_studio, project: int, task_id: int, path: Path, relations: bool = True) -> dict[str, int]:
    """Log in, open the task in the labeling view, screenshot it; count what the view shows.

    Returns how many highlighted regions and (``relations``: waited for) relation arrows the page draws.
    """
    driver = chromium()
    try:
        driver.get(f"{label_studio.url}/user/login/")
        driver.find_element("name", "email").send_keys(label_studio.username)
        driver.find_element("name", "password").send_keys(label_studio.password)
        driver.find_element("css selector", "button[type=submit], input[type=submit]").click()
        wait(driver, "!location.pathname.startsWith('/user/login')")
        driver.get(f"{label_studio.url}/projects/{project}/data?task={task_id}")
        regions = wait(driver, "document.querySelectorAll('.htx-highlight').length", 90)
        # the arrows are drawn in an SVG overlay, one relationItem per relation
        arrows = "document.querySelectorAll('.relations-overlay [class*=relationItem]').length"
        drawn = wait(driver, arrows, 60) if relations else driver.execute_script(f"return {arrows}")
        time.sleep(2)  # let the arrows settle after layout
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
        return {"regions": int(regions), "relations": int(drawn)}
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)


def screenshot_page(url: str, path: Path, width: int = 1100, height: int = 4000) -> dict[str, int]:
    """Open a page (a report: ``file://``), screenshot it; count the plots and tables it draws."""
    driver = chromium(width, height)
    try:
        driver.get(url)
        plots = wait(driver, "document.querySelectorAll('figure svg polyline, figure svg rect').length", 30)
        tables = driver.execute_script("return document.querySelectorAll('table').length")
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
        return {"plot_marks": int(plots), "tables": int(tables),
                "svgs": int(driver.execute_script("return document.querySelectorAll('figure svg').length"))}
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)
