"""Screenshots of the docs site in headless Chromium: the home page and a method page.

    python scripts/screenshot_docs.py                # writes docs/assets/screenshots/{home,gbpo}.png
    python scripts/screenshot_docs.py --out /tmp/shots --chromium /usr/bin/chromium

Builds the site (``mkdocs build --strict``), serves it on loopback, and lets Chromium load each page
with JavaScript on, so the pictures show the navigation as Material lays it out and the formulas as
KaTeX renders them (offline: the site carries KaTeX itself). Needs Chromium (Debian: ``apt-get
install chromium``); it is not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# page, and the window height that reaches its formula (headless Chromium does not scroll to an anchor)
PAGES = {"home": ("", 900), "gbpo": ("objectives/gbpo/", 2300)}
# no network here: Chromium's background services would only fail, many times over
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@contextlib.contextmanager
def serve(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with socketserver.TCPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "assets" / "screenshots")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    if not args.chromium:
        sys.exit("no Chromium found: install it (Debian: apt-get install chromium) or pass --chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rlkit-site-") as tmp:
        site = Path(tmp) / "site"
        subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                       check=True)
        with serve(site) as url:
            for name, (page, height) in PAGES.items():
                shot = args.out / f"{name}.png"
                subprocess.run([args.chromium, *FLAGS, f"--user-data-dir={tmp}/profile-{name}",
                                f"--window-size={args.width},{height}", "--virtual-time-budget=10000",
                                f"--screenshot={shot}", url + page], check=True, capture_output=True, timeout=120)
                print(f"wrote {shot}")


if __name__ == "__main__":
    main()
