"""The console in a real browser: headless Chromium (the distribution's package) driven by
Selenium, against a real broker, the cloud ingest, the console and a device daemon.

An operator logs in, finds the pending approval of a run started on the device (its id is
not given to the browser), approves it by clicking, and the run completes on the device. A
viewer's approve is refused by the server. A deployment started from the CLI shows the device's
answer on its page. Screenshots of the runs, trace and deployment pages are kept with the
test's files and copied to test-artifacts/ (gitignored)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.broker import Broker, free_port
from support.daemon import DaemonProcess, cli_json, until

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
DEVICE = """
[device]
id = "press-7"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:{port}"
insecure = true
ack_timeout_s = 2
[workflows.gated]
start = "gate"
[workflows.gated.nodes.gate]
approval = {{ prompt = "Ship lot 4?" }}
next = "done"
[workflows.gated.nodes.done]
end = true
"""


def browser() -> Any:
    """Headless Chromium through chromedriver, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed"
                                    " (the dev extra)")
    binary = next((p for p in CHROMIUM if Path(p).exists()), shutil.which("chromium"))
    driver = next((p for p in DRIVER if Path(p).exists()), shutil.which("chromedriver"))
    if binary is None or driver is None:
        pytest.skip("no chromium/chromium-driver here (make system-deps installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(arg)
    from selenium.webdriver.chrome.service import Service
    return webdriver.Chrome(options=options, service=Service(driver))


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False
    until(up, timeout=30)


class Cloud:
    """The ingest and the console, each a real `edge-agent-cloud` process."""

    def __init__(self, tmp: Path, broker: Broker) -> None:
        self.port = free_port()
        self.config = tmp / "cloud.toml"
        self.config.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                               '[store]\nurl = "sqlite:///cloud.db"\n[console]\n'
                               f'listen = "127.0.0.1:{self.port}"\ntokens = "tokens.json"\n')
        self.tokens = {name: self.cli("console", "token", "add", name, "--role", role)
                       for name, role in (("ana", "operator"), ("bob", "viewer"))}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = tmp / "cloud.log"

    def cli(self, *args: str) -> str:
        r = subprocess.run([CLOUD, *args, "--config", str(self.config)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def start(self) -> None:
        logf = self.log.open("ab")
        for args in (["run"], ["console"]):
            self.procs.append(subprocess.Popen([CLOUD, *args, "--config", str(self.config)],
                                               stdout=logf, stderr=subprocess.STDOUT))
        wait_port(self.port, self.procs[-1], self.log)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Cloud, Path, Any]]:
    """Broker, ingest, console, a device daemon running the gated workflow, a browser."""
    driver = browser()
    broker = Broker(tmp_path).start()
    cloud = Cloud(tmp_path, broker)
    device_cfg = tmp_path / "config.toml"
    device_cfg.write_text(DEVICE.format(port=broker.port))
    daemon = DaemonProcess(device_cfg, tmp_path)
    try:
        cloud.start()
        daemon.start()
        daemon.wait_for("READY=1")
        yield cloud, device_cfg, driver
    finally:
        driver.quit()
        daemon.close()
        cloud.stop()
        broker.kill()


def log_in(driver: Any, cloud: Cloud, name: str) -> None:
    from selenium.webdriver.common.by import By
    driver.delete_all_cookies()
    driver.get(f"http://127.0.0.1:{cloud.port}/login")
    driver.find_element(By.ID, "token").send_keys(cloud.tokens[name])
    driver.find_element(By.ID, "login").click()
    until(lambda: f"{name} (" in text_of(driver, "nav .who"), timeout=10)


def text_of(driver: Any, selector: str) -> str:
    """The text of the first element matching, or "" (also while a page is loading)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    try:
        found = driver.find_elements(By.CSS_SELECTOR, selector)
        return str(found[0].text) if found else ""
    except WebDriverException:
        return ""


def pending_row(driver: Any, cloud: Cloud, run_id: str, *, load: bool = True) -> Any:
    """The approvals page's row for the run, once the page's own polling shows it."""
    from selenium.webdriver.common.by import By
    if load:
        driver.get(f"http://127.0.0.1:{cloud.port}/approvals")
    rows: list[Any] = []

    def shown() -> bool:
        rows[:] = driver.find_elements(By.CSS_SELECTOR, f'tr.approval[data-run="{run_id}"]')
        return bool(rows)
    until(shown, timeout=30, every=0.5)  # no reload: the fragment poll brings it
    return rows[0]


def test_operator_approves_in_the_browser_and_the_run_completes(
        fleet: tuple[Cloud, Path, Any], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    cloud, device_cfg, driver = fleet
    # a viewer has the approvals page open before the run starts: the run's approval
    # appears there without a reload (the page keeps a mark set before the run began)
    log_in(driver, cloud, "bob")
    driver.get(f"http://127.0.0.1:{cloud.port}/approvals")
    assert "Nothing is waiting" in text_of(driver, "#approvals")
    driver.execute_script("window.notReloaded = true;")
    run_id = cli_json(device_cfg, "start", "gated")["run_id"]
    row = pending_row(driver, cloud, run_id, load=False)
    assert driver.execute_script("return window.notReloaded === true;")
    assert cli_json(device_cfg, "runs", "show", run_id)["status"] == "waiting_approval"

    # the viewer cannot send it: the buttons are off, and the server refuses the form even
    # when the page is tampered with
    button = row.find_element(By.CSS_SELECTOR, "button.approve")
    assert not button.is_enabled()
    driver.execute_script("arguments[0].disabled = false;", button)
    button.click()
    until(lambda: "viewer" in text_of(driver, "#refused"), timeout=10)
    assert "Forbidden" in driver.find_element(By.TAG_NAME, "h1").text
    time.sleep(1)
    assert cli_json(device_cfg, "runs", "show", run_id)["status"] == "waiting_approval"

    # the operator finds it, writes a note, approves by clicking
    log_in(driver, cloud, "ana")
    row = pending_row(driver, cloud, run_id)
    assert "Ship lot 4?" in row.text and "press-7" in row.text
    row.find_element(By.NAME, "note").send_keys("ok from the console")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    until(lambda: "approved" in text_of(driver, "#flash"), timeout=15)
    until(lambda: cli_json(device_cfg, "runs", "show", run_id)["status"] == "completed",
          timeout=30)
    gate = cli_json(device_cfg, "runs", "show", run_id)["context"]["gate"]
    assert (gate["origin"], gate["by"], gate["note"]) == ("cloud", "ana", "ok from the console")

    # the runs page shows it completed (its poll brings the device's records in)
    driver.get(f"http://127.0.0.1:{cloud.port}/runs")
    status = f'tr.run[data-run="{run_id}"] td.status'
    until(lambda: text_of(driver, status) == "completed", timeout=30, every=0.5)
    shot = tmp_path / "runs-page.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "console-runs-page.png")

    # its trace, as a tree with timings
    driver.find_element(By.CSS_SELECTOR, f'tr.run[data-run="{run_id}"] a').click()
    until(lambda: "gate" in text_of(driver, "#trace li.step"), timeout=10)
    assert "approved by ana from cloud: ok from the console" in \
        text_of(driver, "#trace")
    driver.save_screenshot(str(tmp_path / "trace-page.png"))
    shutil.copy(tmp_path / "trace-page.png", ARTIFACTS / "console-trace-page.png")

    # a deployment started from the CLI: its page shows the device's answer without a
    # reload (this device takes no remote config, so it rejects it, saying why)
    fragment = tmp_path / "stamp.toml"
    fragment.write_text('[workflows.stamp]\nstart = "done"\n[workflows.stamp.nodes.done]\n'
                        'end = true\n')
    dep_id = cloud.cli("deploy", str(fragment), "--devices", "press-7", "--waves", "100%",
                       "--bake", "1s").split()[0]
    driver.get(f"http://127.0.0.1:{cloud.port}/deployments/{dep_id}")
    until(lambda: text_of(driver, 'tr.device[data-device="press-7"] td.state') == "rejected",
          timeout=30, every=0.5)
    assert "remote_config" in text_of(driver, 'tr.device[data-device="press-7"] td.reason')
    driver.save_screenshot(str(tmp_path / "deployment-page.png"))
    shutil.copy(tmp_path / "deployment-page.png", ARTIFACTS / "console-deployment-page.png")
