"""Screenshots of a run's report, as a reader first sees it, at desktop and at phone width.

    python analyses/report_screenshots.py runs/demo [--out reports/demo]

Makes RUN's report (prunekit report), opens it in headless Chromium (prunekit.report.browser) at 1280x900 and
at 390x844 (a phone, mobile emulation), and writes the first screen of each, and the whole page at phone
width, as desktop.png, phone.png and phone-full.png into --out. Says what the browser reported as wrong, and
how far the page scrolls sideways at each width (0: it does not).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prunekit.quiet import quiet_libraries

quiet_libraries()
from prunekit.report import browser, build_report  # noqa: E402

WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
SIDEWAYS = "document.documentElement.scrollWidth - document.documentElement.clientWidth"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory")
    parser.add_argument("--out", type=Path, default=Path("reports/demo"))
    args = parser.parse_args()
    page = build_report(args.run)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (width, height) in WIDTHS.items():
        shots = {name: False} if name == "desktop" else {name: False, f"{name}-full": True}
        for file, full in shots.items():
            opened = browser.open_page(page, width, height, SIDEWAYS, full_page=full)
            (args.out / f"{file}.png").write_bytes(opened.screenshot)
            print(f"{file}: {width}x{height}{' (whole page)' if full else ''}, scrolls sideways by {opened.value} px, "
                  f"problems: {opened.problems or 'none'} -> {args.out / f'{file}.png'}")


if __name__ == "__main__":
    main()
