"""The demo as a new user runs it: ``python3 dev.py example`` in a terminal, a browser, Ctrl-C.

One demo runs for the module, started through ``dev.py`` in a pseudo-terminal of its
own, as a shell in a terminal window starts it. The tests load its pages with an HTTP
client, submit the notes form, run ``poolstatus`` on its servers, take screenshots with
headless Chromium, and last press Ctrl-C in its terminal: the terminal sends SIGINT to
the whole foreground process group, as it does for a user.
"""

from __future__ import annotations

import contextlib
import html
import http.cookiejar
import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.png import pixels

pytestmark = pytest.mark.demo

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 60.0
# The colours of the pages' stylesheet that the screenshots must show.
NOTE_BOX = (0xEE, 0xF5, 0xFC)  # "These notes were read from ..." on a replica
CHECKED_OUT_AREA = (0x9C, 0xC3, 0xEA)
WAITING_LINE = (0xD0, 0x3A, 0x1B)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
#: Set to a directory (docs/_static) to keep the screenshots there.
SCREENSHOTS_ENV = "POOLCONF_SCREENSHOTS_DIR"

# Becomes the session leader of the terminal given as its standard input, then the program.
TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def user_environment() -> dict[str, str]:
    """This process's environment less what the test settings put there: a user's shell."""
    return {
        key: value
        for key, value in os.environ.items()
        if key
        not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "DATABASE_REPLICA_URLS"}
    }


class Demo:
    """``dev.py example`` running in a pseudo-terminal, and what it printed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        env = user_environment()
        # dev.py in the venv running these tests, which holds what `example` needs.
        command = [sys.executable, "dev.py", "--venv", sys.prefix, "example"]
        command += ["--port", str(port)]
        self.master, terminal = pty.openpty()
        attributes = termios.tcgetattr(terminal)
        attributes[3] |= termios.ISIG  # Ctrl-C sends SIGINT, as in a terminal window
        attributes[6][termios.VINTR] = b"\x03"
        termios.tcsetattr(terminal, termios.TCSANOW, attributes)
        self.process = subprocess.Popen(
            [sys.executable, "-c", TAKE_TERMINAL, *command],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        os.close(terminal)
        self._output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every process of the terminal has closed it
                return
            if not chunk:
                return
            self._output += chunk

    @property
    def output(self) -> str:
        return self._output.decode(errors="replace").replace("\r\n", "\n")

    def printed(self, pattern: str) -> str:
        found = re.search(pattern, self.output, re.MULTILINE)
        assert found is not None, f"{pattern!r} not printed:\n{self.output}"
        return found.group(1)

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the demo exited:\n{self.output}"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/health/db/live", timeout=5),
            ):
                return
            time.sleep(0.2)
        raise AssertionError(f"the demo did not serve in time:\n{self.output}")

    def press_ctrl_c(self) -> int:
        """Type Ctrl-C in the demo's terminal; return its exit status."""
        os.write(self.master, b"\x03")
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            self._reader.join(timeout=10)

    def kill(self) -> None:
        """Stop what is left, after a failed test: SIGTERM to its process group."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=STOP_TIMEOUT_S)
        os.close(self.master)


class Browser:
    """An HTTP client with cookies, as a browser keeps them."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies)
        )

    def get(self, path: str) -> tuple[int, str]:
        with self.opener.open(f"{self.base_url}{path}", timeout=30) as response:
            return response.status, response.read().decode()

    def submit(self, path: str, page: str, **fields: str) -> tuple[int, str]:
        """POST a form of ``page`` with its CSRF token; follow the redirect, as a browser does."""
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token is not None, page
        data = urllib.parse.urlencode({"csrfmiddlewaretoken": token[1], **fields})
        with self.opener.open(
            f"{self.base_url}{path}", data=data.encode(), timeout=30
        ) as response:
            return response.status, response.read().decode()


def answered_by(page: str) -> dict[str, str]:
    """The alias, role and port a page says answered its reads."""
    found = re.search(
        r'id="answered-by"[^>]*data-alias="([^"]+)" data-port="(\d+)" data-role="(\w+)"',
        page,
    )
    assert found is not None, page
    return {"alias": found[1], "port": found[2], "role": found[3]}


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def postgres_processes(base_dir: str) -> set[int]:
    """The PostgreSQL servers of the demo's cluster (``-D`` under its directory), and their children."""
    parents: dict[int, int] = {}
    servers: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        if not running(pid):
            continue
        parents[pid] = int(stat.rpartition(")")[2].split()[1])
        if Path(command[0].decode(errors="replace")).name == "postgres" and any(
            part.decode(errors="replace").startswith(base_dir) for part in command
        ):
            servers.add(pid)
    return servers | {pid for pid, parent in parents.items() if parent in servers}


def running(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie no one reaped yet (the init of a container) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def processes_naming(text: str) -> set[int]:
    """Every process with ``text`` in its command line (the cluster's watchdog too)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            with contextlib.suppress(OSError):
                command = (entry / "cmdline").read_bytes()
                if text.encode() in command and running(int(entry.name)):
                    found.add(int(entry.name))
    return found


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    if sys.prefix == sys.base_prefix:
        pytest.fail(
            "The demo test runs dev.py in the tests' venv: run the suite in one "
            "(python3 dev.py test)."
        )
    running = Demo(_free_port())
    try:
        running.wait_until_serving()
        yield running
    finally:
        running.kill()


def test_demo_serves_every_page_and_reads_from_a_server_that_has_your_write(
    demo: Demo,
) -> None:
    primary_url = demo.printed(r"^DATABASE_URL=(\S+)")
    replica_url = demo.printed(r"^DATABASE_REPLICA_URLS=(\S+)")
    primary_port = str(urllib.parse.urlsplit(primary_url).port)
    replica_port = str(urllib.parse.urlsplit(replica_url).port)
    # The banner lists every page, the health views included.
    for path in (
        "/",
        "/pool",
        "/api/notes",
        "/api/pool",
        "/health/db",
        "/health/db/live",
    ):
        assert re.search(rf"^  {re.escape(demo.url + path)} +\S", demo.output, re.M)

    browser = Browser(demo.url)
    status, page = browser.get("/")
    assert status == 200
    assert "The replica streams everything written on the primary." in page
    before = answered_by(page)
    assert before == {"alias": "replica1", "port": replica_port, "role": "replica"}

    for path in ("/pool", "/pool?partial=1"):
        status, pool_page = browser.get(path)
        assert status == 200
        assert answered_by(pool_page)["alias"] == "replica1"
        assert f"PostgreSQL on port {primary_port}" in pool_page
        assert '<svg class="chart"' in pool_page
    pools = json.loads(browser.get("/api/pool")[1])
    assert pools["aliases"]["default"]["server"]["port"] == int(primary_port)
    assert pools["aliases"]["replica1"]["server"]["in_recovery"] is True
    assert pools["router"]["read_from"] == "replica1"
    assert pools["router"]["replicas"]["replica1"]["breaker"] == "closed"

    # The replica stops replaying: a read there would not see the new note.
    with psycopg.connect(replica_url, autocommit=True) as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            text = f"Written by the demo test at {time.time()}."
            status, page = browser.submit("/", page, text=text)
            assert status == 200  # after the redirect to /
            assert html.escape(text) in page
            assert answered_by(page) == {
                "alias": "default",
                "port": primary_port,
                "role": "primary",
            }
            assert "You added a note in the last 15 s" in page
            notes = json.loads(browser.get("/api/notes")[1])
            assert notes["notes"][0]["text"] == text  # the pin holds for the API too
            # A client that did not write still reads the replica, stale for now.
            status, other = Browser(demo.url).get("/")
            assert answered_by(other)["alias"] == "replica1"
            assert html.escape(text) not in other
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")

    # Once the replica has replayed the note, the writer's reads go back to it.
    def read_from_replica() -> str | None:
        page = browser.get("/")[1]
        return page if answered_by(page)["alias"] == "replica1" else None

    page = wait_for(read_from_replica, "the writer's reads to return to the replica")
    assert html.escape(text) in page

    health = json.loads(browser.get("/health/db")[1])
    assert health["status"] == "healthy"
    assert set(health["databases"]) == {"default", "replica1"}
    assert json.loads(browser.get("/health/db/live")[1])["status"] == "alive"

    # poolstatus, as the banner says to run it, sees the demo's own connections.
    command = demo.printed(r"^  (DATABASE_URL=\S+ DATABASE_REPLICA_URLS=.*poolstatus)$")
    result = subprocess.run(
        ["sh", "-c", f"{command} --json"],
        cwd=ROOT,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "healthy"
    assert set(report["databases"]) == {"default", "replica1"}
    table = subprocess.run(
        ["sh", "-c", command],
        cwd=ROOT,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert table.returncode == 0, table.stdout + table.stderr
    # dev.py became the example (exec), so the server's pid is the one started here.
    assert f"django_poolconf:default:{demo.process.pid}" in table.stdout, table.stdout


def test_demo_burst_moves_the_live_charts(demo: Demo) -> None:
    browser = Browser(demo.url)
    page = browser.get("/pool")[1]
    status, page = browser.submit("/pool/burst", page)
    assert status == 200
    assert "Burst sent" in page or "still running" in page

    # 40 requests at once, 20 per alias, on pools of 5 + 5: each pool fills and some wait.
    def peaks() -> dict[str, tuple[int, int]] | None:
        aliases = json.loads(browser.get("/api/pool")[1])["aliases"]
        found = {
            alias: (
                max(s["checked_out"] for s in numbers["last_minute"]),
                max(s["waiting"] for s in numbers["last_minute"]),
            )
            for alias, numbers in aliases.items()
        }
        full = all(out == 10 and waiting > 0 for out, waiting in found.values())
        return found if full else None

    wait_for(peaks, "both pools to fill and have waiters")
    chart = browser.get("/pool?partial=1")[1]
    assert chart.count('<polygon class="out"') == 2
    assert "checked out (peak 10)" in chart


def _chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _screenshot(chromium: str, url: str, path: Path, size: str) -> None:
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={path.parent / 'chromium-profile'}",
            f"--window-size={size}",
            f"--screenshot={path}",
            url,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )


def test_screenshots_of_the_notes_and_live_pool_pages_are_not_blank(
    demo: Demo, tmp_path: Path
) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    browser = Browser(demo.url)
    page = browser.get("/pool")[1]
    browser.submit("/pool/burst", page)
    wait_for(
        lambda: all(
            max(s["checked_out"] for s in numbers["last_minute"]) == 10
            for numbers in json.loads(browser.get("/api/pool")[1])["aliases"].values()
        ),
        "the burst to fill both pools",
    )
    notes, pool = tmp_path / "example-notes.png", tmp_path / "example-pool.png"
    _screenshot(chromium, f"{demo.url}/", notes, "900,420")
    _screenshot(chromium, f"{demo.url}/pool", pool, "900,940")

    for path, colours in (
        (notes, [NOTE_BOX]),
        (pool, [NOTE_BOX, CHECKED_OUT_AREA, WAITING_LINE]),
    ):
        assert path.stat().st_size > 10_000, path
        width, height, counts = pixels(path)
        assert (width, height) == ((900, 420) if path == notes else (900, 940))
        background = counts.most_common(1)[0][1]
        assert background < 0.95 * width * height, f"{path.name} is nearly one colour"
        assert len(counts) > 100, f"{path.name} has {len(counts)} colours"
        for colour in colours:
            # Filled areas, not a few antialiased pixels.
            assert counts[colour] > 200, f"{path.name} lacks {colour}: {counts[colour]}"

    keep = os.environ.get(SCREENSHOTS_ENV)
    if keep:
        for path in (notes, pool):
            shutil.copy(path, ROOT / keep / path.name)


# Starts the demo as a background job of a shell script (`... &`), which runs it with
# SIGINT ignored, writes its pid to $PIDFILE, and prints its exit status when it ends.
BACKGROUND_JOB = (
    '"$@" >"$LOG" 2>&1 &\necho "$!" >"$PIDFILE"\nwait "$!"\necho "exit $?"\n'
)


@pytest.mark.parametrize("kill", [["kill"], ["kill", "-INT"]], ids=["TERM", "INT"])
def test_a_background_demo_stops_on_kill_and_leaves_nothing_running(
    kill: list[str], tmp_path: Path
) -> None:
    """``python3 dev.py example &``, then ``kill PID``: the demo and its servers stop.

    A wrapper dev.py left the example orphaned on SIGTERM, serving with both servers
    running, and its background job ignored SIGINT.
    """
    if sys.prefix == sys.base_prefix:
        pytest.fail(
            "The demo test runs dev.py in the tests' venv (python3 dev.py test)."
        )
    port = _free_port()
    log, pid_file = tmp_path / "demo.log", tmp_path / "demo.pid"
    command = [sys.executable, "dev.py", "--venv", sys.prefix, "example"]
    with subprocess.Popen(
        ["sh", "-c", BACKGROUND_JOB, "sh", *command, "--port", str(port)],
        cwd=ROOT,
        env={**user_environment(), "LOG": str(log), "PIDFILE": str(pid_file)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the cleanup below can end all of it
    ) as shell:
        try:
            url = f"http://127.0.0.1:{port}"

            def serving() -> bool:
                assert shell.poll() is None, log.read_text()
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(f"{url}/health/db/live", timeout=5),
                ):
                    return True
                return False

            wait_for(serving, "the demo to serve", START_TIMEOUT_S)
            started = re.search(
                r"^Started in [\d.]+ s, in (\S+) ", log.read_text(), re.M
            )
            assert started is not None, log.read_text()
            base_dir = started[1]
            servers = postgres_processes(base_dir)
            assert len(servers) >= 2, f"no PostgreSQL server found under {base_dir}"

            # As typed in the shell; the script ends once the job has.
            subprocess.run([*kill, pid_file.read_text().strip()], check=True)
            status = shell.communicate(timeout=STOP_TIMEOUT_S)[0].strip()
        finally:
            # What is left of the job's process group, the shell ended or not (an
            # example orphaned by a wrapper that died stays in it).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)
            shell.wait(timeout=STOP_TIMEOUT_S)
    output = log.read_text()
    assert status == "exit 0", output
    assert "Traceback" not in output, output
    assert output.rstrip().endswith("Stopped."), output
    assert not {pid for pid in servers if running(pid)}, output
    assert not postgres_processes(base_dir)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health/db/live", timeout=5)
    wait_for(lambda: not processes_naming(base_dir), "the watchdog to leave", 15)
    assert not Path(base_dir).exists()


@pytest.mark.last_in_module
def test_ctrl_c_in_the_terminal_stops_the_demo_and_its_servers(demo: Demo) -> None:
    base_dir = demo.printed(r"^Started in [\d.]+ s, in (\S+) \(removed at exit\)")
    servers = postgres_processes(base_dir)
    assert len(servers) >= 2, f"no PostgreSQL server found under {base_dir}"
    # The terminal sends SIGINT to its foreground process group: the demo and
    # whatever of it is in that group, once. (dev.py forwarding it a second time
    # interrupted the shutdown: tracebacks and status 254.)
    status = demo.press_ctrl_c()
    output = demo.output
    assert status == 0, output
    assert "Traceback" not in output, output
    assert output.rstrip().endswith("Stopped."), output
    alive = {pid for pid in servers if running(pid)}
    assert not alive, f"PostgreSQL processes left: {alive}"
    assert not postgres_processes(base_dir)
    # The cluster's watchdog notices its owner is gone, finds nothing to stop, and leaves.
    wait_for(lambda: not processes_naming(base_dir), "the watchdog to leave", 15)
    assert not Path(base_dir).exists()
