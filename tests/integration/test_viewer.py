"""The web viewer in a real browser (Debian's chromium, headless, driven by Playwright) against
the real gateway, the real embedded Triton and a real RTSP server; and SSE resume with
``Last-Event-ID``, in the browser and with a plain client.

Screenshots land in build/screenshots/ (test artifacts).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import http.server
import itertools
import json
import re
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page

from embedded_triton import EmbeddedTriton
from export.parity import scenes
from harness.browser import PageErrors, chromium, screenshot
from harness.helpers import GatewayProcess, encode, free_port, gateway, read_sse, scene, stream_info, wait_until
from harness.peers.clips import write_clip
from harness.peers.proxy import TcpProxy
from harness.peers.rtsp import RtspServer
from tests.conftest import DETECTOR

pytestmark = pytest.mark.timeout(300)
KEY = "viewer-test-key-0123456789"
T = TypeVar("T")
FRAME_INTERVAL_S = 2.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a thread of its own: Playwright's sync API keeps a loop on this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def run_seq(event_id: str) -> tuple[int, int]:
    run, _, seq = event_id.partition("-")
    return int(run), int(seq)


def assert_no_gaps(ids: list[str], what: str) -> None:
    """Within a run, every seq follows the one before: nothing was missed or sent twice."""
    pairs = [run_seq(i) for i in ids]
    for (r0, s0), (r1, s1) in itertools.pairwise(pairs):
        assert r1 > r0 or (r1 == r0 and s1 == s0 + 1), f"{what}: {r0}-{s0} is followed by {r1}-{s1}"


def predicting(gw: GatewayProcess, sid: str) -> bool:
    return bool(stream_info(gw, sid)["predictions"] > 0)


@pytest.fixture(scope="module")
def camera() -> Iterator[RtspServer]:
    server = RtspServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def viewer_gateway(
    triton: EmbeddedTriton, camera: RtspServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("viewer")
    still = np.asarray(Image.fromarray(scenes(1, 360, 640, seed=42)[0].transpose(1, 2, 0)))
    clip = write_clip(tmp / "still.mp4", seconds=2.0, still=still)
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_TRITON__REQUEST_TIMEOUT_S": "20",
        "APP_FRAME_SAMPLE_FPS": "2",
        # the synthetic detector's scores are low: every box it finds is drawn
        "APP_DETECTOR__SCORE_THRESHOLD": "0",
        "APP_DETECTOR__ALL_CLASSES": "true",
        "APP_STREAMS": json.dumps(
            [
                {"id": "cam", "url": camera.url},
                {"id": "det", "url": str(clip), "loop": True, "model": DETECTOR, "width": 320, "height": 180},
            ]
        ),
        "APP_STREAM_POLICY__ALLOWED_HOSTS": '["127.0.0.1"]',
        "APP_STREAM_POLICY__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "APP_INGEST__BACKOFF_MAX_S": "1",
        # longer than a 2 fps stream's frame interval: frame.jpg's encode budget is what limits encodes
        "APP_VIEWER__FRAME_INTERVAL_S": str(FRAME_INTERVAL_S),
        "APP_INGEST__READ_TIMEOUT_S": "2",
    }
    with gateway(env, tmp / "gateway.log") as gw:
        for sid in ("cam", "det"):
            wait_until(functools.partial(predicting, gw, sid), 60, what=f"{sid} predicting")
        yield gw


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def open_page(browser: Browser, url: str) -> tuple[Page, PageErrors]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = PageErrors().attach(page)
    page.goto(url)
    return page, errors


def shown_frame(page: Page) -> int:
    return int(page.get_attribute("#prediction", "data-frame") or 0)


def badge(page: Page, sid: str) -> str | None:
    return page.get_attribute(f'#streams li[data-stream="{sid}"] .badge', "data-state")


def test_the_page_shows_live_predictions_without_console_errors(
    browser: Browser, viewer_gateway: GatewayProcess
) -> None:
    page, errors = open_page(browser, f"{viewer_gateway.url}/#stream=cam")
    try:
        page.wait_for_function("() => Number(document.querySelector('#prediction').dataset.frame) > 0", timeout=30_000)
        first = shown_frame(page)
        # predictions update live: the page shows later frames as their events arrive
        page.wait_for_function(
            f"() => Number(document.querySelector('#prediction').dataset.frame) >= {first + 3}", timeout=30_000
        )
        assert page.locator("#topk li").count() == 5, "the classifier's top-5 bars are shown"
        assert re.fullmatch(r"\d+\.\d ms", page.text_content("#stat-batch") or ""), "the wait for a batch is shown"
        assert page.get_attribute("#conn", "data-state") == "connected"
        assert badge(page, "cam") == "running" and badge(page, "det") == "running"
        page.wait_for_function("() => document.querySelector('#frame').dataset.frame > 0", timeout=15_000)
        page.wait_for_timeout(1500)  # let the charts draw a few points for the screenshot
        screenshot(page, "viewer-classifier")
        assert errors.messages == [], errors.messages
    finally:
        page.close()


def test_a_detector_stream_gets_its_boxes_drawn_over_the_frame(
    browser: Browser, viewer_gateway: GatewayProcess
) -> None:
    page, errors = open_page(browser, f"{viewer_gateway.url}/#stream=det")
    try:
        page.wait_for_function(
            "() => Number(document.querySelector('#frame-overlay').dataset.boxes || 0) > 0", timeout=30_000
        )
        # the boxes are those of the event whose frame the JPEG is
        frame = int(page.get_attribute("#frame", "data-frame") or 0)
        assert frame > 0
        assert "box" in (page.text_content("#detection-summary") or "")
        screenshot(page, "viewer-detector")
        assert errors.messages == [], errors.messages
    finally:
        page.close()


def test_an_uploaded_image_gets_a_result(browser: Browser, viewer_gateway: GatewayProcess, tmp_path: Path) -> None:
    image = tmp_path / "upload.jpg"
    image.write_bytes(encode(scene(320, 240, seed=3), "JPEG"))
    page, errors = open_page(browser, viewer_gateway.url)
    try:
        page.wait_for_function("() => document.querySelector('#upload-model').options.length > 1", timeout=30_000)
        page.set_input_files("#upload-input", str(image))
        page.wait_for_function("() => document.querySelector('#upload-summary').dataset.task", timeout=30_000)
        assert page.get_attribute("#upload-summary", "data-task") == "classification"
        assert page.locator("#upload-topk li").count() == 5
        # and with the detector: boxes over the uploaded image
        page.select_option("#upload-model", DETECTOR)
        page.set_input_files("#upload-input", str(image))
        page.wait_for_function("() => document.querySelector('#upload-summary').dataset.task === 'detection'")
        assert "person" in (page.text_content("#upload-summary") or "")
        assert errors.messages == [], errors.messages
    finally:
        page.close()


def test_streams_added_in_the_page_follow_their_camera_and_can_be_removed(
    browser: Browser, viewer_gateway: GatewayProcess
) -> None:
    port = free_port()
    cam = RtspServer(port=port)
    page, _ = open_page(browser, viewer_gateway.url)
    try:
        page.wait_for_selector('#streams li[data-stream="cam"]')
        page.fill("#add-stream input[name=id]", "added")
        page.fill("#add-stream input[name=url]", cam.url)
        page.click("#add-stream button[type=submit]")
        page.wait_for_selector('#streams li[data-stream="added"] .badge[data-state="running"]', timeout=30_000)
        # the camera goes away: the badge turns to reconnecting (or stalled first), from the status events
        cam.kill()
        page.wait_for_function(
            """() => ['reconnecting', 'stalled'].includes(
                 document.querySelector('#streams li[data-stream="added"] .badge').dataset.state)""",
            timeout=30_000,
        )
        screenshot(page, "viewer-reconnecting")
        cam = RtspServer(port=port)  # back on the same port
        page.wait_for_selector('#streams li[data-stream="added"] .badge[data-state="running"]', timeout=60_000)
        # a URL the policy refuses is refused in the page too, with the API's message
        page.fill("#add-stream input[name=id]", "refused")
        page.fill("#add-stream input[name=url]", "rtsp://169.254.169.254/x")
        page.click("#add-stream button[type=submit]")
        page.wait_for_selector("#add-stream-error:not([hidden])")
        assert "stream_refused" in (page.text_content("#add-stream-error") or "")
        # removed with its button: gone from the page and from the gateway
        page.click('#streams li[data-stream="added"] button')
        page.wait_for_selector('#streams li[data-stream="added"]', state="detached", timeout=15_000)
        assert httpx.get(f"{viewer_gateway.url}/streams", timeout=10).json()[-1]["id"] != "added"
    finally:
        page.close()
        cam.stop()


def test_a_lost_connection_shows_disconnected_and_resumes_without_a_gap(
    browser: Browser, viewer_gateway: GatewayProcess
) -> None:
    with TcpProxy(viewer_gateway.port) as proxy:
        page, _ = open_page(browser, f"{proxy.url}/#stream=cam")
        try:
            page.wait_for_function("() => window.streamml.received('cam').length >= 3", timeout=30_000)
            assert page.get_attribute("#conn", "data-state") == "connected"
            proxy.cut()
            page.wait_for_selector('#conn[data-state="disconnected"]', timeout=15_000)
            assert page.is_visible("#disconnected-banner")
            screenshot(page, "viewer-disconnected")
            # events go on while the page is away: at least 4 of them
            seen = page.evaluate("window.streamml.received('cam')")
            _, last_seq = run_seq(seen[-1])
            wait_until(
                lambda: run_seq(stream_info(viewer_gateway, "cam")["last_event_id"])[1] >= last_seq + 4,
                30,
                what="4 events while the page is disconnected",
            )
            proxy.restore()
            page.wait_for_selector('#conn[data-state="connected"]', timeout=30_000)
            target = run_seq(stream_info(viewer_gateway, "cam")["last_event_id"])[1]
            page.wait_for_function(
                f"() => window.streamml.received('cam').length && "
                f"Number(window.streamml.received('cam').at(-1).split('-')[1]) >= {target}",
                timeout=30_000,
            )
            ids = page.evaluate("window.streamml.received('cam')")
            # (the first is the current status a new subscriber gets, with its own older id)
            assert_no_gaps(ids[1:], "the page's event ids")
            assert page.evaluate("window.streamml.lost('cam')") == [], "the gateway announced lost events"
            assert len(ids) >= len(seen) + 4
        finally:
            page.close()


def test_a_plain_sse_client_resumes_with_last_event_id(viewer_gateway: GatewayProcess) -> None:
    url = f"{viewer_gateway.url}/streams/cam/events"
    first = run(read_sse(url, 30, stop_after=3))
    assert first.status == 200
    ids = [e.id for e in first.events if e.id]
    last = ids[-1]
    wait_until(
        lambda: run_seq(stream_info(viewer_gateway, "cam")["last_event_id"])[1] >= run_seq(last)[1] + 4,
        30,
        what="4 events while the client is away",
    )
    # given the id of the last event it read, the client gets everything after it, then live events
    again = run(read_sse(url, 30, stop_after=6, headers={"Last-Event-ID": last}))
    assert again.status == 200
    resumed = [e.id for e in again.events if e.id]
    assert run_seq(resumed[0]) == (run_seq(last)[0], run_seq(last)[1] + 1), f"resumed at {resumed[0]} after {last}"
    assert_no_gaps([last, *resumed], "a plain client's resume")
    assert not [e for e in again.events if e.data.get("reason") == "events_lost"]
    # the same through the query parameter (a new EventSource cannot set the header)
    by_query = run(read_sse(f"{url}?last_event_id={last}", 30, stop_after=1))
    assert by_query.events[0].id == resumed[0]
    # a malformed id is the client's error
    bad = httpx.get(url, headers={"Last-Event-ID": "yesterday"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request", bad.text


def test_a_restarted_stream_gets_new_ids_and_an_old_id_gets_a_counted_gap(
    viewer_gateway: GatewayProcess, camera: RtspServer
) -> None:
    base = viewer_gateway.url
    body = {"id": "again", "url": camera.url}
    assert httpx.post(f"{base}/streams", json=body, timeout=30).status_code == 201
    wait_until(lambda: stream_info(viewer_gateway, "again")["predictions"] >= 2, 30, what="first predictions")
    old = run(read_sse(f"{base}/streams/again/events", 30, stop_after=2))
    old_id = next(e.id for e in reversed(old.events) if e.id)
    wait_until(
        lambda: run_seq(stream_info(viewer_gateway, "again")["last_event_id"])[1] >= run_seq(old_id)[1] + 2,
        30,
        what="2 more events",
    )
    assert httpx.delete(f"{base}/streams/again", timeout=30).status_code == 204
    assert httpx.post(f"{base}/streams", json=body, timeout=30).status_code == 201
    try:
        resumed = run(read_sse(f"{base}/streams/again/events", 30, stop_after=3, headers={"Last-Event-ID": old_id}))
        notice, *rest = resumed.events
        # the missed tail of the old run is counted (at least the 2 predictions and the final status)
        assert notice.type == "status" and notice.data["reason"] == "events_lost", notice
        assert notice.data["lost_events"] is not None and notice.data["lost_events"] >= 3, notice.data
        new_runs = {run_seq(e.id)[0] for e in rest if e.id}
        assert new_runs and min(new_runs) > run_seq(old_id)[0], "a new run of the stream has newer ids"
    finally:
        httpx.delete(f"{base}/streams/again", timeout=30)


def test_frame_jpg_is_encoded_at_most_once_per_interval_however_many_viewers(
    viewer_gateway: GatewayProcess,
) -> None:
    url = f"{viewer_gateway.url}/streams/cam/frame.jpg"
    before = stream_info(viewer_gateway, "cam")
    seconds, viewers = 4.0, 10

    async def viewer(client: httpx.AsyncClient, until: float) -> list[int]:
        frames = []
        while asyncio.get_running_loop().time() < until:
            r = await client.get(url)
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            assert r.content[:3] == b"\xff\xd8\xff"
            frames.append(int(r.headers["x-frame-index"]))
        return frames

    async def all_viewers() -> list[list[int]]:
        async with httpx.AsyncClient(timeout=10) as client:
            until = asyncio.get_running_loop().time() + seconds
            return await asyncio.gather(*(viewer(client, until) for _ in range(viewers)))

    served = run(all_viewers())
    after = stream_info(viewer_gateway, "cam")
    encodes = after["frames_encoded"] - before["frames_encoded"]
    requests = sum(len(f) for f in served)
    assert requests > 5 * viewers, f"only {requests} requests"
    # one encode per interval at most, whatever the number of requests (the stream has a new frame
    # every 0.5 s, so without the budget there would be about 8)
    assert 1 <= encodes <= seconds / FRAME_INTERVAL_S + 1, f"{encodes} encodes for {requests} requests"
    # viewers add no inference: each sampled frame is inferred once, or replaced by a newer one first
    sampled = after["frames_sampled"] - before["frames_sampled"]
    dropped = after["frames_dropped"] - before["frames_dropped"]
    inferred = after["inferences"] - before["inferences"]
    assert abs(inferred - (sampled - dropped)) <= 2, f"{inferred} inferences, {sampled} sampled, {dropped} dropped"
    assert httpx.get(f"{viewer_gateway.url}/streams/nope/frame.jpg", timeout=10).status_code == 404


# --- auth and CORS (gateways of their own) -------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class StaticSite:
    """A plain web server on its own port (another origin) serving one page."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


CROSS_ORIGIN_PAGE = """<!doctype html><meta charset="utf-8"><title>other origin</title><script>
const gw = new URLSearchParams(location.search).get("gw");
window.result = {events: 0, error: null, fetched: null};
const es = new EventSource(gw + "/streams/cam/events");
es.addEventListener("prediction", () => { window.result.events += 1; });
es.onerror = () => { if (es.readyState === EventSource.CLOSED) window.result.error = "closed"; };
fetch(gw + "/streams").then(r => r.json()).then(b => { window.result.fetched = b.length; })
  .catch(e => { window.result.fetched = "refused: " + e; });
</script>"""


def test_cors_lets_configured_origins_use_the_api_and_sse_and_refuses_others(
    browser: Browser, triton: EmbeddedTriton, camera: RtspServer, tmp_path: Path
) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text(CROSS_ORIGIN_PAGE)
    allowed, other = StaticSite(tmp_path / "site"), StaticSite(tmp_path / "site")
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_STREAMS": json.dumps([{"id": "cam", "url": camera.url}]),
        "APP_CORS_ORIGINS": json.dumps([allowed.origin]),
    }
    try:
        with gateway(env, tmp_path / "gateway.log") as gw:
            results: dict[str, Any] = {}
            for name, site in (("allowed", allowed), ("other", other)):
                page = browser.new_page()
                page.goto(f"{site.origin}/index.html?gw={gw.url}")
                if name == "allowed":
                    page.wait_for_function(
                        "() => window.result.events >= 2 && window.result.fetched !== null", timeout=30_000
                    )
                else:
                    page.wait_for_function(
                        "() => window.result.error && window.result.fetched !== null", timeout=30_000
                    )
                results[name] = page.evaluate("window.result")
                page.close()
    finally:
        allowed.close()
        other.close()
    assert results["allowed"]["events"] >= 2 and results["allowed"]["fetched"] == 1, results
    assert results["other"]["events"] == 0 and str(results["other"]["fetched"]).startswith("refused"), results


def test_the_page_asks_for_the_api_key_once_then_streams_with_a_token(
    browser: Browser, triton: EmbeddedTriton, camera: RtspServer, tmp_path: Path
) -> None:
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_STREAMS": json.dumps([{"id": "cam", "url": camera.url}]),
        "APP_AUTH__API_KEYS": KEY,
    }
    with gateway(env, tmp_path / "gateway.log") as gw:
        page = browser.new_page()
        try:
            page.goto(gw.url)
            page.wait_for_selector("#key-dialog[open]", timeout=15_000)
            page.fill("#key-input", KEY)
            page.click("#key-form button[type=submit]")
            page.wait_for_function(
                "() => Number(document.querySelector('#prediction').dataset.frame) > 0", timeout=30_000
            )
            assert page.get_attribute("#conn", "data-state") == "connected"
            # the SSE requests carried a token, never the key
            log = gw.log()
            assert "/streams/cam/events?token=***" in log, "the page opened the stream with a token"
            assert KEY not in log
        finally:
            page.close()
