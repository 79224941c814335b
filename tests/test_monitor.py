"""The web monitor at ``/`` of ``resumeflow serve``: a real server subprocess on loopback
(tests/server_harness.py) and a real headless browser (Debian's chromium and chromedriver,
driven by Selenium; one browser for the module, explicit waits only).

The contract is docs/monitor.md ("Stable hooks for tests"): run rows carry ``data-run-id`` and
``data-status``; node elements ``data-node-id`` and ``data-status``; action buttons
``data-action`` = resume, rerun, interrupt, cancel; a confirmation is a button with
``data-action="confirm"``.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Iterator

import httpx
import pytest
from resumeflow.server import web
from rf_server_workflows import executions
from server_harness import (  # noqa: F401 (the *_fixture names: fixtures used by name)
    SERVED,
    TOKEN,
    Server,
    get_run,
    launch,
    new_id,
    servers_fixture,
    start_run,
    wait_status,
)

MONITORED = (*SERVED, "rf_monitor_workflows:flaky", "rf_monitor_workflows:fan")
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 30

# -- no browser: the page is served, and nothing in it reaches another host ------------------


def test_shipped_assets_name_no_external_url():
    assets = sorted(p for p in web.ASSETS.rglob("*") if p.is_file())
    assert {p.name for p in assets} >= {"index.html", "main.js", "monitor.css"}, assets
    for path in assets:
        text = path.read_text()
        found = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", text)
        assert "http://" not in text and "https://" not in text and not found, f"{path.name} names an external URL: {found}"


def test_page_and_assets_need_no_token_but_the_api_does(servers):
    server = servers(workflows=MONITORED)  # with a token
    page = httpx.get(f"{server.base}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/monitor/main.js" in page.text
    for asset in ("main.js", "api.js", "run.js", "monitor.css"):
        resp = httpx.get(f"{server.base}/monitor/{asset}", timeout=10)
        assert resp.status_code == 200, asset
    assert httpx.get(f"{server.base}/monitor/main.js", timeout=10).headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{server.base}/api/v1/events", timeout=10).status_code == 401
    assert httpx.get(f"{server.base}/monitor/../app.py", timeout=10).status_code == 404


def test_store_events_stream_counts_then_status_changes(servers):
    server = servers(workflows=MONITORED, token=None)
    run_id = new_id("feed")
    seen: list[tuple[str, dict]] = []

    with httpx.Client(base_url=server.base, timeout=httpx.Timeout(30, read=40)) as client:
        with client.stream("GET", "/api/v1/events") as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            kind = None
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    data = json.loads(line.split(":", 1)[1])
                    seen.append((kind, data))
                    if len(seen) == 1:
                        start_run(client, "quick", {"count": 1}, run_id=run_id)
                    if kind == "counts" and data["counts"]["completed"] == 1:
                        break  # counts follow the run messages of the same read
    assert seen[0][0] == "counts" and seen[0][1]["total"] == 0, seen[0]
    mine = [d for k, d in seen if k == "run" and d["run_id"] == run_id]
    assert mine[-1]["completed"] == mine[-1]["total"] == 3 and mine[-1]["workflow"] == "quick"
    assert [d["updated_at"] for d in mine] == sorted(d["updated_at"] for d in mine)
    last_counts = [d for k, d in seen if k == "counts"][-1]
    assert last_counts["counts"]["completed"] == 1 and last_counts["by_workflow"]["quick"]["completed"] == 1


# -- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMEDRIVER):
        pytest.skip(f"{CHROMEDRIVER} missing (apt-get install chromium chromium-driver)")
    os.environ["SE_OFFLINE"] = "1"  # Selenium Manager never downloads anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    if os.path.exists("/usr/bin/chromium"):
        options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server without a token for the browser tests."""
    workdir = tmp_path_factory.mktemp("monitor")
    ledger = workdir / "ledger.txt"
    ledger.touch()
    server = launch(workdir, str(workdir / "runs.db"), ledger, token=None, workflows=MONITORED)
    yield server
    server.stop(10)


@pytest.fixture(name="api")
def api_fixture(monitored: Server) -> Iterator[httpx.Client]:
    with monitored.client() as client:
        yield client


def wait(driver, predicate, what: str, timeout: float = WAIT_S):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: predicate(d), message=what)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def row_status(driver, run_id: str) -> str | None:
    rows = css(driver, f'tr[data-run-id="{run_id}"]')
    return rows[0].get_attribute("data-status") if rows else None


def node_status(driver, node: str) -> str | None:
    nodes = css(driver, f'[data-node-id="{node}"]')
    return nodes[0].get_attribute("data-status") if nodes else None


def run_status(driver) -> str | None:
    shown = css(driver, "[data-run-status]")
    return shown[0].get_attribute("data-run-status") if shown else None


def open_list(driver, server: Server) -> None:
    driver.get(f"{server.base}/")
    wait(driver, lambda d: d.find_element("id", "feed-state").text == "live", "the live feed connects")


def open_run(driver, server: Server, run_id: str) -> None:
    """Opens the list, then the run by clicking its row (as a user does)."""
    open_list(driver, server)
    wait(driver, lambda d: row_status(d, run_id) is not None, f"row of {run_id}")
    css(driver, f'tr[data-run-id="{run_id}"]')[0].click()
    wait(driver, lambda d: run_status(d) is not None and css(d, "[data-node-id]"), f"run page of {run_id}")


def act(driver, action: str) -> None:
    """Clicks the action button, then the confirmation."""
    css(driver, f'[data-action="{action}"]')[0].click()
    wait(driver, lambda d: css(d, '[data-action="confirm"]'), f"confirmation of {action}")
    css(driver, '[data-action="confirm"]')[0].click()
    wait(driver, lambda d: not css(d, '[data-action="confirm"]'), "the confirmation closes")


def test_runs_list_shows_a_run_go_from_running_to_completed_without_reload(browser, monitored, api):
    open_list(browser, monitored)
    browser.execute_script("window.__not_reloaded = true")
    run_id = new_id("live")
    start_run(api, "slow", {"delay": 1.0}, run_id=run_id)
    wait(browser, lambda d: row_status(d, run_id) == "running", "the row shows running")
    wait(browser, lambda d: row_status(d, run_id) == "completed", "the row shows completed")
    assert browser.execute_script("return window.__not_reloaded") is True
    row = css(browser, f'tr[data-run-id="{run_id}"]')[0]
    assert "completed" in row.text and "3/3" in row.text  # status as text, progress
    # Filters: by workflow, then by status through the counts.
    from selenium.webdriver.support.ui import Select

    Select(css(browser, '[data-filter="workflow"]')[0]).select_by_value("quick")
    wait(browser, lambda d: row_status(d, run_id) is None, "the slow run leaves a quick-only list")
    Select(css(browser, '[data-filter="workflow"]')[0]).select_by_value("")
    css(browser, '[data-count-status="completed"]')[0].click()
    wait(browser, lambda d: row_status(d, run_id) == "completed", "the completed filter shows the run")
    assert all(r.get_attribute("data-status") == "completed" for r in css(browser, "tr[data-run-id]"))
    css(browser, '[data-count-status=""]')[0].click()


def test_resume_after_fixing_the_cause_completes_the_failed_node(browser, monitored, api, tmp_path):
    flag = tmp_path / "fixed.flag"
    run_id = new_id("flaky")
    start_run(api, "flaky", {"flag": str(flag)}, run_id=run_id)
    wait_status(api, run_id, "failed")
    open_run(browser, monitored, run_id)
    assert node_status(browser, "risky") == "failed" and node_status(browser, "setup") == "completed"
    assert node_status(browser, "report") == "pending"
    css(browser, '[data-node-id="risky"]')[0].click()
    wait(browser, lambda d: "is missing" in d.find_element("id", "view").text, "the node's error in words")
    flag.touch()  # the fix
    act(browser, "resume")
    wait(browser, lambda d: node_status(d, "risky") == "completed", "risky turns completed")
    wait(browser, lambda d: run_status(d) == "completed", "the run completes")
    assert node_status(browser, "report") == "completed"
    assert executions(monitored.ledger, run_id) == {"setup": 1, "risky": 2, "report": 1}


def test_rerun_executes_the_selected_node_and_its_dependants_only(browser, monitored, api):
    run_id = new_id("fan")
    start_run(api, "fan", {"seed": 2}, run_id=run_id)
    wait_status(api, run_id, "completed")
    open_run(browser, monitored, run_id)
    css(browser, '[data-node-id="left"]')[0].click()
    wait(browser, lambda d: css(d, '[data-node-id="left"]')[0].get_attribute("aria-pressed") == "true", "left is selected")
    act(browser, "rerun")
    wait(browser, lambda d: executions(monitored.ledger, run_id)["join"] == 2, "join runs again")
    wait(browser, lambda d: run_status(d) == "completed" and node_status(d, "join") == "completed", "the run completes again")
    assert executions(monitored.ledger, run_id) == {"root": 1, "left": 2, "right": 1, "join": 2}
    assert get_run(api, run_id)["nodes"]["left"]["attempt"] == 2
    # The timeline shows both attempts of `left`.
    wait(browser, lambda d: len(css(d, '.gantt .bar[aria-label^="left attempt"]')) == 2, "two bars for left")


def test_interrupt_pauses_and_cancel_cancels(browser, monitored, api):
    paused = new_id("pause")
    start_run(api, "slow", {"delay": 1.5}, run_id=paused)
    open_run(browser, monitored, paused)
    wait(browser, lambda d: node_status(d, "nap") == "running", "nap runs")
    act(browser, "interrupt")
    wait(browser, lambda d: run_status(d) == "paused", "the run pauses after nap")
    assert node_status(browser, "nap") == "completed" and node_status(browser, "finish") == "pending"

    cancelled = new_id("cancel")
    start_run(api, "slow", {"delay": 60}, run_id=cancelled)
    open_run(browser, monitored, cancelled)
    wait(browser, lambda d: node_status(d, "nap") == "running", "nap runs")
    act(browser, "cancel")
    wait(browser, lambda d: run_status(d) == "cancelled", "the run is cancelled")
    assert get_run(api, cancelled)["status"] == "cancelled"


def test_a_refused_action_shows_the_servers_error_in_words(browser, monitored, api):
    run_id = new_id("done")
    start_run(api, "quick", {"count": 1}, run_id=run_id)
    wait_status(api, run_id, "completed")
    open_run(browser, monitored, run_id)
    act(browser, "resume")  # a completed run cannot be resumed as is: 409 RunNotResumable
    message = wait(browser, lambda d: [m for m in css(d, "[data-message]") if m.is_displayed()], "the refusal shows")[0]
    wait(browser, lambda d: "409" in message.text, "the status code shows")
    assert "RunNotResumable" in message.text and "cannot be resumed" in message.text, message.text
    assert message.get_attribute("role") == "alert"


def test_streaming_items_show_live(browser, monitored, api):
    run_id = new_id("stream")
    open_list(browser, monitored)
    start_run(api, "streamy", {"items": 10, "gap": 0.3}, run_id=run_id)
    wait(browser, lambda d: row_status(d, run_id) is not None, "the row appears")
    css(browser, f'tr[data-run-id="{run_id}"]')[0].click()
    wait(browser, lambda d: css(d, '[data-node-id="tokens"]'), "the run page")
    css(browser, '[data-node-id="tokens"]')[0].click()
    wait(browser, lambda d: "live items" in d.find_element("id", "view").text and "tok" in d.find_element("id", "view").text, "items arrive live")
    wait(browser, lambda d: run_status(d) == "completed", "the run completes")
    # Values as GET /results gives them.
    wait(browser, lambda d: '"tok9"' in d.find_element("id", "view").text, "the value shows")


def test_screenshot_of_the_run_page_is_not_blank(browser, monitored, api, tmp_path):
    run_id = new_id("shot")
    start_run(api, "fan", {"seed": 3}, run_id=run_id)
    wait_status(api, run_id, "completed")
    open_run(browser, monitored, run_id)
    wait(browser, lambda d: all(node_status(d, n) == "completed" for n in ("root", "left", "right", "join")), "every node completed")
    wait(browser, lambda d: len(css(d, ".gantt .bar")) == 4 and css(d, '[data-checkpoint-id] [data-action="resume"]'), "timeline and checkpoints")
    shot = tmp_path / "run-page.png"
    assert browser.save_screenshot(str(shot))
    width, height, colours = png_colours(shot.read_bytes())
    assert width >= 800 and height >= 600, (width, height)
    assert len(colours) > 20, f"the screenshot looks blank: {len(colours)} colours"


def test_token_prompt_asks_once_and_again_after_a_401(browser, servers):
    server = servers(workflows=MONITORED)  # with a token
    with server.client() as client:
        run_id = start_run(client, "quick", {"count": 1}, run_id=new_id("tok"))["run_id"]
        wait_status(client, run_id, "completed")
    browser.get(f"{server.base}/")
    prompt = wait(browser, lambda d: css(d, "#token-input"), "the token prompt")[0]
    prompt.send_keys("wrong-token\n")
    wait(browser, lambda d: css(d, "#token-input") and "refused" in d.find_element("id", "token-dialog").text, "asked again after a 401")
    css(browser, "#token-input")[0].send_keys(f"{TOKEN}\n")
    wait(browser, lambda d: row_status(d, run_id) == "completed", "the list loads with the token")
    assert TOKEN not in browser.current_url
    assert browser.execute_script("return document.cookie") == ""
    assert browser.execute_script("return sessionStorage.getItem('resumeflow.token')") == TOKEN
    browser.refresh()  # asked once: a reload in the same tab keeps it
    wait(browser, lambda d: row_status(d, run_id) == "completed", "the list loads again")
    assert not css(browser, "#token-input")
    browser.execute_script("sessionStorage.clear()")


# -- PNG decoding (stdlib only) ---------------------------------------------------------------


def png_colours(data: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct pixel values of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour_type = header[:4]
    assert depth == 8 and colour_type in (2, 6), header
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, row = line[0], bytearray(line[1:])
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                row[i] = (row[i] + a) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + b) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        if y % 4 == 0:  # a sample of the rows is plenty
            colours.update(bytes(row[x : x + bpp]) for x in range(0, stride, bpp * 4))
        previous = row
    return width, height, colours


def test_png_colours_reads_a_tiny_png():
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"\x00" + bytes([255, 0, 0, 0, 255, 0]) + b"\x02" + bytes([0, 0, 0, 0, 0, 0])
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    width, height, colours = png_colours(png)
    assert (width, height) == (2, 2) and bytes([255, 0, 0]) in colours

