"""report.html in a real browser (headless Chromium): every figure loads and nothing sticks out of the window,
at 1280 px and in a narrow window (wide tables scroll in their own box). Skipped where Chromium is missing."""
import json
import re
import shutil
import subprocess

import pytest

from prunescope.report import build_report
from test_report import make_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs in the page after load and appends its findings as JSON in a <pre>, which --dump-dom then prints.
PROBE = """<script>
window.addEventListener("load", function () {
  var vw = document.documentElement.clientWidth, out = [];
  document.querySelectorAll("body *").forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.right <= vw + 0.5 && r.left >= -0.5) return;
    for (var p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      var x = getComputedStyle(p).overflowX;  // inside a box that scrolls and itself fits: fine
      if ((x === "auto" || x === "scroll") && p.getBoundingClientRect().right <= vw + 0.5) return;
    }
    out.push(el.tagName + " " + Math.round(r.left) + "-" + Math.round(r.right));
  });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({viewport: vw, scrollWidth: document.documentElement.scrollWidth,
    images: Array.prototype.map.call(document.images, function (i) {
      return {complete: i.complete, width: i.naturalWidth, right: i.getBoundingClientRect().right}; }),
    overflowing: out.slice(0, 10)});
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def browser():
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        pytest.skip("needs Chromium for the headless check (Debian: apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def probed_page(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("browser") / "run")
    build_report(run)
    html = (run / "report.html").read_text()
    page = run / "probed.html"
    page.write_text(html.replace("</body>", PROBE + "</body>"))
    return page, html.count("<img ")


def render(browser, page, width, profile):
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},900",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no probe output from {browser}: {done.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.parametrize("width", [1280, 720])
def test_report_renders_in_chromium(browser, probed_page, tmp_path, width):
    page, figures = probed_page
    seen = render(browser, page, width, tmp_path / "profile")
    assert figures >= 4 and len(seen["images"]) == figures
    assert all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]  # every figure decoded
    assert all(i["right"] <= seen["viewport"] + 0.5 for i in seen["images"])
    assert seen["overflowing"] == [] and seen["scrollWidth"] <= seen["viewport"], seen
