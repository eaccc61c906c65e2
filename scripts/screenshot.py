#!/usr/bin/env python3
"""A screenshot of a page in headless Chromium, scrolled to an element: the README's pictures.

    python3 scripts/screenshot.py URL OUT.png [--element ID] [--size 1280x1000]

Drives Debian's chromium through chromedriver (scripts/setup-lab.sh installs both) over the WebDriver
protocol, which is plain HTTP and JSON, so the standard library is enough. The page is loaded whole
before the shot (WebDriver's navigation waits for it), which `chromium --screenshot` does not do for
large pages.
"""
import argparse
import base64
import json
import socket
import subprocess
import time
import urllib.request


def call(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["value"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--element", help="the id of the element to scroll to the top")
    parser.add_argument("--size", default="1280x1000", help="the window, WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/session"
    try:
        options = {"binary": "/usr/bin/chromium",
                   "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--window-size={width},{height}"]}
        for _ in range(100):
            try:
                session = call(base, "POST", {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}})
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit("chromedriver did not start")
        page = f"{base}/{session['sessionId']}"
        call(f"{page}/url", "POST", {"url": args.url})
        if args.element:
            call(f"{page}/execute/sync", "POST",
                 {"script": "document.getElementById(arguments[0]).scrollIntoView()", "args": [args.element]})
        with open(args.out, "wb") as f:
            f.write(base64.b64decode(call(f"{page}/screenshot")))
        call(page, "DELETE")
    finally:
        driver.kill()
        driver.wait()


if __name__ == "__main__":
    main()
