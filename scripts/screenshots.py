"""Screenshots of the four views of the NAT explorer, taken with headless Chromium.

    python scripts/screenshots.py                     # embedded model -> docs/images/app_*.png
    python scripts/screenshots.py --task arithmetic   # the short-answer task instead of the default
    python scripts/screenshots.py --model runs/x/checkpoints/step-000060 --out /tmp/shots
    python scripts/screenshots.py --live-only --live-task late-credit --out docs/images/late_credit

Starts the app (`minnat.explorer`) on a free localhost port in this process, opens it in
Chromium (Debian's /usr/bin/chromium through Playwright; no network needed), runs each view
once with its default settings (the Tokens view with a typed sampling seed, so the picture can
be reproduced; live training with its own defaults unless --live-steps is given), saves one PNG
per view and prints the Gradient-agreement and Live-training tables, the numbers docs/app.md quotes. The live run's
temporary folder is removed when it ends, like any run of the page.
"""
from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def open_browser(playwright):
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"Chromium is not at {CHROMIUM}; install it with `apt-get install chromium`.")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(400)


def wait_for_text(page, selector: str, text: str, timeout_s: float) -> None:
    page.locator(selector).filter(has_text=text).first.wait_for(state="visible", timeout=timeout_s * 1000)


def wait_until_idle(page, timeout_s: float = 600) -> None:
    """Wait until no event is processing (gradio shows "processing | …s" over a busy output)."""
    page.wait_for_function("() => !document.body.innerText.includes('processing |')", timeout=timeout_s * 1000)


def live_training(page, args, out: Path) -> None:
    """Run the Live view once (its defaults, or --live-task / --live-steps), then capture it."""
    open_tab(page, "Live training")
    if args.live_task is not None:
        # Choosing the task re-ticks that task's default methods (late-credit: the contrast too).
        page.get_by_label("task", exact=True).click()
        page.get_by_role("option", name=args.live_task, exact=True).click()
        page.wait_for_timeout(1000)
    if args.live_steps is not None:
        steps = page.get_by_label("steps", exact=True)
        steps.fill(str(args.live_steps))
        steps.press("Enter")
    page.get_by_role("button", name="Start").click()
    started = time.time()
    wait_for_text(page, "#nat-live-status", "Done (", args.live_timeout)
    print(f"live training took {time.time() - started:.0f} s")
    page.wait_for_timeout(2500)
    wait_until_idle(page)
    page.screenshot(path=str(out / "app_live_training.png"), full_page=True)
    for name in ("#nat-live-status", "#nat-live-table"):
        print(page.locator(name).inner_text())
    print("wrote", out / "app_live_training.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="model for the app (default: %(default)s)")
    parser.add_argument("--task", default=None,
                        help="task for the app (default: the trainer's default task, as `python app.py`)")
    parser.add_argument("--sampling-seed", type=int, default=0,
                        help="sampling seed typed into the Tokens view (default: %(default)s)")
    parser.add_argument("--out", default=str(REPO_ROOT / "docs" / "images"), help="folder for the PNG files")
    parser.add_argument("--live-steps", type=int, default=None,
                        help="GRPO steps per method in the live view (default: the view's own, the trainer's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-live", action="store_true", help="skip the Live-training view (minutes of training)")
    parser.add_argument("--live-only", action="store_true", help="capture the Live-training view only")
    parser.add_argument("--live-task", default=None,
                        help="task chosen in the Live view's own menu, e.g. late-credit (default: the page's)")
    parser.add_argument("--live-timeout", type=float, default=3600,
                        help="seconds to wait for the live runs to finish (default: %(default)s)")
    args = parser.parse_args(argv)

    import torch
    from playwright.sync_api import sync_playwright

    from minnat.explorer import build_app, launch
    from minnat.explorer.page import DEFAULT_TASK

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    demo = build_app(args.model, args.task or DEFAULT_TASK)
    launch(demo, port=port, block=False, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        with sync_playwright() as playwright:
            browser = open_browser(playwright)
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
            page.goto(url)
            # Tokens: the page samples a group on load; type the sampling seed, sample, then capture.
            wait_for_text(page, "#nat-tokens", "response 1", 120)
            if args.live_only:
                live_training(page, args, out)
                browser.close()
                return 0
            seed = page.get_by_label("sampling seed", exact=True)
            seed.fill(str(args.sampling_seed))
            seed.press("Enter")
            page.get_by_role("button", name="Sample responses").click()
            wait_for_text(page, "#nat-tokens .nat-prompt", f"sampling seed {args.sampling_seed} (typed)", 300)
            page.wait_for_timeout(800)
            wait_until_idle(page)
            page.screenshot(path=str(out / "app_tokens.png"), full_page=True)
            print("wrote", out / "app_tokens.png")

            open_tab(page, "HT weights")
            page.get_by_role("button", name="Plot").click()
            wait_for_text(page, "#nat-weights-table", "uniform-floor", 60)
            page.wait_for_timeout(1500)
            wait_until_idle(page)
            page.screenshot(path=str(out / "app_ht_weights.png"), full_page=True)
            print("wrote", out / "app_ht_weights.png")

            open_tab(page, "Gradient agreement")
            page.get_by_role("button", name="Compute").click()
            wait_for_text(page, "#nat-agreement-table", "RPC ρ=0.5", 1200)
            # The table fills in method by method; the status says "Computing …" until the last one is done.
            page.wait_for_function("() => !document.querySelector('#nat-agreement-status').innerText"
                                   ".includes('Computing')", timeout=1200 * 1000)
            page.wait_for_timeout(2500)
            wait_until_idle(page)
            page.screenshot(path=str(out / "app_gradient_agreement.png"), full_page=True)
            print("wrote", out / "app_gradient_agreement.png")

            for name in ("#nat-agreement-status", "#nat-agreement-table"):
                print(page.locator(name).inner_text())

            if args.no_live:
                browser.close()
                return 0
            live_training(page, args, out)
            browser.close()
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
