"""The demo in a real browser: Debian's headless Chromium, driven by Selenium through Debian's chromedriver.

Nothing is downloaded: the browser and its driver are the system's (apt-get install chromium
chromium-driver), and Selenium Manager is never asked for one. Skipped when they are absent.
"""

from __future__ import annotations

import math
import os
import shutil
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from demo_helpers import BAD_INPUT_MESSAGES, bad_files, loopback_only, serving, weights_to_download
from PIL import Image

from preim3d.align import align_face, detect_faces
from preim3d.pipeline import Editor

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's headless browser: apt-get install chromium chromium-driver",
)
WINDOW = (1400, 1800)
# The page, not the browser, must show the results: waits are generous for a 2-core CI machine.
TIMEOUT = 60


@pytest.fixture(scope="module", autouse=True)
def no_network():
    with loopback_only():
        yield


@pytest.fixture(scope="module")
def editor(tiny_bundle):
    return Editor.from_pretrained(tiny_bundle, device="cpu", deterministic=True)


@pytest.fixture(scope="module")
def url(editor):
    with serving(editor) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(flag)
    # a driver path given to the Service: Selenium Manager (which downloads drivers) is skipped
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    yield driver
    driver.quit()


def wait(browser, condition, timeout=TIMEOUT):
    return WebDriverWait(browser, timeout).until(lambda b: condition(b))


def upload(browser, url, path):
    browser.get(url)
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#photo input[type=file]")).send_keys(str(path))


def image_src(browser, elem_id):
    found = browser.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
    return found[0].get_attribute("src") if found else None


def fetch_image(src) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=10) as response:
        return np.asarray(Image.open(BytesIO(response.read())).convert("RGB"), dtype=np.int16)


def number(browser, elem_id) -> float:
    return float(
        browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]").get_attribute("value")
    )


def click_slider(browser, elem_id, fraction):
    """Click a slider's track at `fraction` of its width, as a person would
    (pointer events: release fires)."""
    track = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=range]")
    ActionChains(browser).move_to_element_with_offset(
        track, round((fraction - 0.5) * track.size["width"]), 0
    ).click().perform()


def expected_edit(editor, photo, edits, browser):
    """What the page must show: the photo's first detected face, edited, from the sliders' camera."""
    face = align_face(photo, detect_faces(photo)[0])
    yaw, pitch = (math.radians(number(browser, i)) for i in ("yaw", "pitch"))
    return editor.render(editor.edit(editor.invert(face), edits), yaw, pitch)


def toast(browser, text):
    """Wait for a message box on the page that contains `text`; returns its text."""

    def found(b):
        texts = [t.text for t in b.find_elements(By.CSS_SELECTOR, ".toast-body")]
        return next((t for t in texts if text in t), None)

    return wait(browser, found, timeout=30)


def test_upload_edit_and_render_a_video(browser, url, editor, astronaut_png, tmp_path):
    upload(browser, url, astronaut_png)
    wait(browser, lambda b: all(image_src(b, i) for i in ("aligned", "reconstruction", "edited")))
    assert "Estimated view of the photo" in browser.find_element(By.ID, "status").text
    assert fetch_image(image_src(browser, "aligned")).shape == (512, 512, 3)
    assert fetch_image(image_src(browser, "reconstruction")).shape == (128, 128, 3)

    # move the smile slider: the edited view updates and shows exactly that edit from the sliders' camera
    before = image_src(browser, "edited")
    click_slider(browser, "edit-smile", 0.9)
    strength = number(browser, "edit-smile")
    assert strength > 5
    wait(browser, lambda b: image_src(b, "edited") != before)
    expected = expected_edit(editor, astronaut_png, {"smile": strength}, browser)
    assert np.array_equal(fetch_image(image_src(browser, "edited")), np.asarray(expected, dtype=np.int16))

    # the shortest turntable; the page's video element plays it
    browser.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Turntable video')]").click()
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#frames input[type=range]").is_displayed())
    click_slider(browser, "frames", 0.0)
    assert number(browser, "frames") == 12
    browser.find_element(By.ID, "video-button").click()
    duration, width, height = wait(
        browser,
        lambda b: b.execute_script(
            "const v = document.querySelector('#video video');"
            "return v && v.readyState >= 1 ? [v.duration, v.videoWidth, v.videoHeight] : null;"
        ),
    )
    assert duration == pytest.approx(12 / 30, abs=0.05) and (width, height) == (128, 128)

    shot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot))
    screenshot = np.asarray(Image.open(shot).convert("RGB"))
    assert screenshot.shape[1] == WINDOW[0] and screenshot.std() > 10  # the page, not a blank window
    print(f"screenshot: {shot}")


def test_an_example_with_two_faces_offers_a_choice(browser, url):
    browser.get(url)
    examples = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".gallery-item, button.gallery"))
    assert len(examples) == 3
    examples[2].click()  # two_faces.jpg, in sorted order
    wait(browser, lambda b: "2 faces found" in b.find_element(By.ID, "status").text)
    assert image_src(browser, "faces") and browser.find_element(By.ID, "face-choice").is_displayed()
    first = image_src(browser, "aligned")
    browser.find_element(By.CSS_SELECTOR, "#face-choice input").click()
    wait(browser, lambda b: b.find_elements(By.XPATH, "//*[@role='option'][contains(., 'Face 2')]"))[
        0
    ].click()
    wait(browser, lambda b: "editing face 2" in b.find_element(By.ID, "status").text)
    assert image_src(browser, "aligned") != first


@pytest.mark.parametrize("name", list(BAD_INPUT_MESSAGES))
def test_bad_input_shows_a_message(browser, url, tmp_path, name):
    upload(browser, url, bad_files(tmp_path)[name])
    # a text file is already refused by the browser's upload box, with its own message
    toast(browser, "Invalid file type: notes.txt" if name == "text" else BAD_INPUT_MESSAGES[name])


def screenshot(browser, tmp_path, name) -> Path:
    """Save the page as PNG (in $PREIM3D_SCREENSHOTS if set, to look at them) and check it is not blank."""
    folder = Path(os.environ.get("PREIM3D_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(
        WINDOW[0], max(WINDOW[1], browser.execute_script("return document.body.scrollHeight"))
    )
    assert browser.save_screenshot(str(folder / name))
    browser.set_window_size(*WINDOW)
    assert np.asarray(Image.open(folder / name).convert("RGB")).std() > 10
    print(f"screenshot: {folder / name}")
    return folder / name


def enabled(browser, elem_id) -> bool:
    return browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=range]").is_enabled()


def test_without_weights_download_them_from_the_page_then_edit(
    browser, server, tiny_official_files, tmp_path, astronaut_png
):
    """No weights: the page lists the files and licences; tick, Download (from a local server standing in
    for the official sources), and the page enables and edits, without a restart."""
    with (
        weights_to_download(server, tiny_official_files, tmp_path / "home") as table,
        serving(tmp_path / "missing", build_kwargs={"weights_files": table}) as (url, _),
    ):
        browser.get(url)
        banner = wait(browser, lambda b: b.find_element(By.ID, "weights-missing"))
        for text in ("The model weights are missing", "preim3d download", "eg3d_G_ema.pkl", "non-commercial"):
            assert text in banner.text
        assert not browser.find_elements(By.CSS_SELECTOR, "#photo input[type=file]")  # no upload yet
        assert not enabled(browser, "edit-smile")
        screenshot(browser, tmp_path, "weights-missing.png")

        browser.find_element(By.CSS_SELECTOR, "#download").click()
        toast(browser, "Tick the box to accept the licences")
        assert server.requests == []
        browser.find_element(By.CSS_SELECTOR, "#accept-licences input").click()
        browser.find_element(By.CSS_SELECTOR, "#download").click()
        wait(browser, lambda b: not b.find_elements(By.ID, "weights-missing"), timeout=180)
        assert len(server.requests) == len(table)
        assert enabled(browser, "edit-smile") and enabled(browser, "yaw")
        assert not browser.find_elements(
            By.ID, "edit-bald"
        )  # sliders the downloaded bank has no direction for

        browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(astronaut_png))
        wait(browser, lambda b: image_src(b, "edited"))
        before = image_src(browser, "edited")
        click_slider(browser, "edit-smile", 0.9)
        wait(browser, lambda b: image_src(b, "edited") != before)
        downloaded = Editor.from_pretrained(
            tmp_path / "home" / "weights", precision="fast", deterministic=True
        )
        expected = expected_edit(downloaded, astronaut_png, {"smile": number(browser, "edit-smile")}, browser)
        assert np.array_equal(fetch_image(image_src(browser, "edited")), np.asarray(expected, dtype=np.int16))
        screenshot(browser, tmp_path, "downloaded-and-edited.png")


def test_video_tab_edits_an_uploaded_clip_with_the_sliders(browser, url, tmp_path):
    from skimage import data

    from preim3d.testing import make_face_video

    clip = tmp_path / "clip.mp4"
    face = Image.fromarray(data.astronaut()).crop((120, 40, 360, 280))
    make_face_video(clip, face, size=(320, 240), frames=4, fps=8, face_width=0.75, motion=0.2)
    browser.get(url)
    wait(browser, lambda b: b.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Video')]")).click()
    field = wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#video-input input[type=file]"))
    field.send_keys(str(clip))
    click_slider(browser, "edit-smile", 0.8)
    browser.find_element(By.CSS_SELECTOR, "#video-beside input").click()
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, "#video-input video"))
    browser.find_element(By.ID, "video-edit").click()
    width, height = wait(
        browser,
        lambda b: b.execute_script(
            "const v = document.querySelector('#video-output video');"
            "return v && v.readyState >= 1 ? [v.videoWidth, v.videoHeight] : null;"
        ),
        timeout=120,
    )
    assert (width, height) == (640, 240)  # input | edit
    summary = browser.find_element(By.ID, "video-summary").text
    assert "smile +" in summary and "face edited in 4" in summary
    shot = tmp_path / "video-tab.png"
    assert browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


def test_refine_button_refines_this_tab_only(browser, url, editor, astronaut_png, tmp_path):
    upload(browser, url, astronaut_png)
    wait(browser, lambda b: all(image_src(b, i) for i in ("reconstruction", "edited")))
    before = {i: image_src(browser, i) for i in ("reconstruction", "edited")}
    click_slider(browser, "refine-steps", 0.0)
    assert number(browser, "refine-steps") == 10  # the fewest: seconds on this CPU
    browser.find_element(By.ID, "refine-button").click()
    # ten steps take 10-20 s on an idle 2-core machine, a minute or more on a busy one
    status = wait(
        browser,
        lambda b: "Refined in" in (t := b.find_element(By.ID, "refine-status").text) and t,
        timeout=240,
    )
    assert "10 steps" in status and "dB PSNR" in status and "this browser tab only" in status
    # the reconstruction, then the edited view, come from the refined head
    wait(browser, lambda b: all(image_src(b, i) != before[i] for i in before), timeout=120)
    aligned = fetch_image(image_src(browser, "aligned"))
    refined = np.asarray(Image.fromarray(aligned.astype(np.uint8)).resize((128, 128)), np.float64)
    error = {
        i: np.abs(fetch_image(src).astype(np.float64) - refined).mean()
        for i, src in (("before", before["reconstruction"]), ("after", image_src(browser, "reconstruction")))
    }
    assert error["after"] < error["before"]
    screenshot(browser, tmp_path, "refined.png")
    # another tab (another session) still sees the base editor's head
    upload(browser, url, astronaut_png)
    wait(browser, lambda b: image_src(b, "reconstruction"))
    assert np.array_equal(
        fetch_image(image_src(browser, "reconstruction")), fetch_image(before["reconstruction"])
    )
    assert browser.find_element(By.ID, "refine-status").text == ""
