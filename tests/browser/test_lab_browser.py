"""JupyterLab in a real browser: ``make lab`` serves the repository root with the ``fedmoe`` kernel, and a
notebook run from Lab's Run menu shows its ``plt.show()`` figure inline with no traceback (a global
``MPLBACKEND=Agg`` reaching the kernel shows nothing, which only a rendered page reveals).

Headless Chromium and chromedriver come from Debian's packages (``make test-browser`` installs them as root),
driven by selenium. Marked ``slow`` too, so ``make test``'s ``-m "not slow"`` leaves it out."""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
LEARN_01 = REPO / "notebooks" / "learn" / "01_moe_layer.ipynb"
KERNELSPEC = {"display_name": "fedmoe (.venv)", "language": "python", "name": "fedmoe"}
# Without the background-networking flags Chromium's connections are refused on a closed network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]
PLOT_CELL = """import matplotlib
import matplotlib.pyplot as plt

print("backend:", matplotlib.get_backend())
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([0, 1, 2], [0, 1, 4])
plt.show()"""


@pytest.fixture(scope="module")
def workdir():
    """A scratch folder inside the Lab root's ignored ``results/`` (Lab can only open files under its root)."""
    (REPO / "results").mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="browser-test-", dir=REPO / "results"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, token: str):
    """GET a Jupyter server REST endpoint with the token."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def lab(workdir):
    """``make lab`` itself on a free port with a token we set, Lab's user settings and workspaces kept in the
    scratch folder; without ``MPLBACKEND``, so only what the Makefile exports reaches the kernel. Yields
    ``(base_url, token)``."""
    port, token = free_port(), uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in {"MPLBACKEND", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"}}
    env.update(JUPYTER_TOKEN=token, JUPYTERLAB_SETTINGS_DIR=str(workdir / "lab-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(workdir / "lab-workspaces"), JUPYTER_RUNTIME_DIR=str(workdir / "runtime"))
    log = (workdir / "lab.log").open("w")
    # -o: take the installed venv as it is (no pip run inside a test).
    proc = subprocess.Popen(["make", "--no-print-directory", "-s", "-o", ".venv/.installed", "lab",
                             f"LAB_ARGS=--port={port} --ServerApp.port_retries=0"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"make lab exited ({proc.returncode}):\n{(workdir / 'lab.log').read_text()}"
            assert time.monotonic() < deadline, f"no Lab on {base}:\n{(workdir / 'lab.log').read_text()}"
            try:
                get_json(f"{base}/api/status", token)
                break
            except OSError:
                time.sleep(0.5)
        yield base, token
    finally:
        stop_lab(proc, base, token)
        log.close()


def stop_lab(proc: subprocess.Popen, base: str, token: str) -> None:
    """Shut the server down through its API (it stops its kernels first), then end whatever is left in make's
    process group (a SIGTERM alone once left a jupyter-lab running)."""
    request = urllib.request.Request(f"{base}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"})
    try:
        urllib.request.urlopen(request, timeout=5).close()
        proc.wait(60)
    except (OSError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def browser(workdir):
    """Headless Debian Chromium through selenium, with a fresh profile."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs /usr/bin/chromium and /usr/bin/chromedriver (make test-browser installs them as root)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def write_plot_notebook(folder: Path) -> Path:
    """A two-cell notebook on the kit's kernel that draws one matplotlib figure with ``plt.show()``."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC})
    nb.cells = [nbformat.v4.new_markdown_cell("A figure through `plt.show()`."), nbformat.v4.new_code_cell(PLOT_CELL)]
    path = folder / "plot.ipynb"
    nbformat.write(nb, path)
    return path


def notebook_cases():
    """The test's own plotting notebook, and the first learn notebook where it exists."""
    learn = pytest.param("learn_01", marks=pytest.mark.skipif(not LEARN_01.exists(), reason=f"no {LEARN_01}"))
    return ["plot", learn]


def wait_until(driver, timeout: float, condition, what: str):
    """Poll ``condition(driver)`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition, f"timed out waiting for {what}")


def css(driver, selector: str):
    """The elements matching a CSS selector."""
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def kernel_name(driver) -> str:
    """The kernel named in the notebook toolbar ("No Kernel" until the session has one)."""
    return "".join(e.get_attribute("textContent") for e in css(driver, ".jp-Toolbar-kernelName")).strip()


def kernel_idle(driver) -> bool:
    """The notebook has a kernel and the toolbar's execution indicator reports it idle."""
    return (kernel_name(driver) not in {"", "No Kernel"}
            and bool(css(driver, '.jp-Notebook-ExecutionIndicator[data-status="idle"]')))


def all_cells_ran(driver) -> bool:
    """Every code cell shows an execution count (``[n]:``) and the kernel is idle again."""
    prompts = [p.get_attribute("textContent").strip() for p in css(driver, ".jp-CodeCell .jp-InputPrompt")]
    return bool(prompts) and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts) and kernel_idle(driver)


def run_all_from_menu(driver) -> None:
    """Run > Run All Cells, through Lab's menu bar."""
    menu = next(m for m in css(driver, ".lm-MenuBar-item") if m.get_attribute("textContent").strip() == "Run")
    menu.click()
    item = wait_until(driver, 10, lambda d: css(d, '.lm-Menu-item[data-command="runmenu:run-all"]'),
                      "Run All Cells in the Run menu")
    item[0].click()


def test_lab_is_rooted_at_the_repository(lab):
    """README.md, figures/ and notebooks/ (what the notebooks cite) are all under Lab's root."""
    base, token = lab
    names = {item["name"] for item in get_json(f"{base}/api/contents", token)["content"]}
    assert {"README.md", "figures", "notebooks"} <= names, names


@pytest.mark.parametrize("case", notebook_cases())
def test_run_all_shows_the_figure_inline(case, lab, browser, workdir):
    """Open the notebook in Lab, run all cells from the Run menu, wait for the kernel to go idle, and find a
    loaded ``img`` in an output area and no traceback. The learn notebook is opened as a copy in the scratch
    folder, so Lab never saves outputs into the tracked file."""
    path = write_plot_notebook(workdir) if case == "plot" else Path(shutil.copy(LEARN_01, workdir))
    base, token = lab
    # One workspace per notebook, so the page holds only this notebook.
    browser.get(f"{base}/lab/workspaces/{case}/tree/{path.relative_to(REPO).as_posix()}?token={token}")
    wait_until(browser, 120, kernel_idle, "the notebook's kernel to start")
    if case == "plot":
        assert kernel_name(browser) == KERNELSPEC["display_name"]
    run_all_from_menu(browser)
    wait_until(browser, 180, all_cells_ran, "every cell to run")
    texts = [e.get_attribute("textContent") for e in css(browser, ".jp-OutputArea .jp-RenderedText")]
    tracebacks = [t for t in (e.get_attribute("textContent") for e in css(
        browser, '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]')) if "Traceback" in t]
    assert not tracebacks, tracebacks[0]
    images = css(browser, ".jp-OutputArea img, .jp-RenderedImage img")
    assert images, f"no image output; text outputs: {texts}"
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
               for img in images), "an output image did not load"
