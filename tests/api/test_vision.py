"""Images in chat messages, served for real: one ``autoglm deploy`` process (gateway with keys, the tiny
random GLM-4.1V demo ``autoglm-demo-vision`` and the text-only ``autoglm-demo``) and the official openai
SDK. An image request streams; greedy output equals transformers ``generate()`` on the same inputs, also
while a text request shares the batch; the text-only model answers 400 naming the model; every limit
(count, bytes, pixels, format, data-URL shape) is its own 400 naming the part; images fetch from a local
HTTP server, and a slow one times out with a clean 400. Plus unit tests of the URL checks.
The demo's weights are random: its text is noise, so only equality with generate() is asserted."""
from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from tests.conftest import _stop, free_port, wait_healthy

VISION, TEXT = "autoglm-demo-vision", "autoglm-demo"
ADMIN = "vision-admin-key"
N = 6
LIMITS = dict(max_images=2, max_image_bytes=40_000, max_image_pixels=300 * 300, image_fetch_timeout=1.5)


def _image(seed: int, w: int, h: int, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")).save(buf, format=fmt)
    return buf.getvalue()


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _msg(*urls: str, text: str = "describe it") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


# ---- a local image host ---------------------------------------------------------------------

IMAGES = {"/cat.png": _image(3, 80, 50), "/notes.txt": b"not an image at all"}


class _Host(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        if self.path == "/slow.png":
            time.sleep(4)  # longer than image_fetch_timeout
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/cat.png")
            self.end_headers()
            return
        body = IMAGES.get(self.path.replace("/slow.png", "/cat.png"))
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the server gave up on the slow one
            pass


@pytest.fixture(scope="module")
def image_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Host)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# ---- the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision_dir(autoglm_home):
    from autoglm.hub.demo import ensure_demo_model

    ensure_demo_model(TEXT, autoglm_home)
    return ensure_demo_model(VISION, autoglm_home)  # built here once; the server finds it in the store


@pytest.fixture(scope="module")
def server(autoglm_home, vision_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vision")
    port = free_port()
    deploy = tmp / "deploy.yaml"
    limits = "\n".join(f"  {k}: {v}" for k, v in LIMITS.items())
    deploy.write_text(f"""
models:
  - name: {VISION}
    quantize: fp32
    max_num_seqs: 4
  - name: {TEXT}
    max_num_seqs: 2
gateway:
  admin_key: ${{AUTOGLM_ADMIN_KEY}}
  state_store: sqlite:///{tmp / 'state.db'}
  cache: {{backend: none}}
server:
  port: {port}
  log_level: warning
  access_log: "off"
  image_fetch_private: true
{limits}
""", encoding="utf-8")
    log_path = tmp / "deploy.log"
    env = {**os.environ, "AUTOGLM_HOME": str(autoglm_home), "AUTOGLM_ADMIN_KEY": ADMIN, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "autoglm", "deploy", str(deploy)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log_path, what="autoglm deploy")
        r = httpx.post(url + "/admin/keys", json={"name": "viewer"}, headers={"x-api-key": ADMIN}, timeout=30)
        assert r.status_code == 201, r.text
        yield url, r.json()["key"]
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    url, key = server
    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(vision_dir):
    """Greedy tokens of transformers ``generate()`` for (messages, images), built the way transformers'
    Glm4vProcessor builds them (placeholder repeated in the text, then tokenized)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(vision_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(vision_dir)
    processor = AutoImageProcessor.from_pretrained(vision_dir)
    image_id = tok.convert_tokens_to_ids("<|image|>")

    def run(text: str, images: list[bytes]) -> str:
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
        prompt = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
        kwargs = {}
        if images:
            enc = processor(images=[Image.open(io.BytesIO(b)).convert("RGB") for b in images], return_tensors="pt")
            for grid in enc["image_grid_thw"]:
                prompt = prompt.replace("<|image|>", "<|placeholder|>" * (int(grid.prod()) // 4), 1)
            prompt = prompt.replace("<|placeholder|>", "<|image|>")
            kwargs = dict(pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"])
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=N,
                             min_new_tokens=N, do_sample=False, eos_token_id=None, pad_token_id=0,
                             mm_token_type_ids=(ids == image_id).to(torch.int), **kwargs)
        return tok.decode(out[0, ids.shape[1]:])

    return run


def _greedy(client, messages, **kw):
    return client.chat.completions.create(model=VISION, messages=messages, temperature=0, max_tokens=N,
                                          extra_body={"ignore_eos": True}, **kw)


def _error(client, messages, model=VISION):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    return info.value


# ---- serving ------------------------------------------------------------------------------------


def test_an_image_request_streams_and_equals_generate(client, reference):
    img = _image(0, 90, 60)
    stream = client.chat.completions.create(model=VISION, messages=_msg(_data_url(img), text="what is this?"),
                                            temperature=0, max_tokens=N, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].usage.completion_tokens == N
    assert chunks[-1].usage.prompt_tokens > 6  # the image's 6 placeholder tokens count as prompt tokens
    assert text == reference("what is this?", [img])


def test_two_images_and_a_concurrent_text_request_equal_generate(client, reference):
    a, b = _image(1, 40, 120), _image(2, 64, 64, "JPEG")
    with ThreadPoolExecutor(3) as pool:
        both = pool.submit(_greedy, client, _msg(_data_url(a), _data_url(b, "image/jpeg"), text="compare"))
        plain = pool.submit(_greedy, client, [{"role": "user", "content": "just text, no picture"}])
        other = pool.submit(_greedy, client, _msg(_data_url(a), text="compare"))
        both, plain, other = both.result(), plain.result(), other.result()
    assert both.choices[0].message.content == reference("compare", [a, b])
    assert plain.choices[0].message.content == reference("just text, no picture", [])
    assert other.choices[0].message.content == reference("compare", [a])
    assert both.choices[0].message.content != other.choices[0].message.content or a == b


def test_an_image_fetched_over_http(client, reference, image_host):
    r = _greedy(client, _msg(image_host + "/cat.png", text="and this one?"))
    assert r.choices[0].message.content == reference("and this one?", [IMAGES["/cat.png"]])
    moved = _greedy(client, _msg(image_host + "/moved", text="and this one?"))  # a redirect is followed
    assert moved.choices[0].message.content == r.choices[0].message.content


def _finished(url: str) -> float:
    """autoglm:request_success_total of the vision model (finish reason length), from /metrics."""
    text = httpx.get(url + "/metrics", headers={"x-api-key": ADMIN}, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("autoglm:request_success_total{") and f'model_name="{VISION}"' in line
               and 'finished_reason="length"' in line)


def test_the_gateway_counts_image_requests(server, client):
    url, _ = server
    before = _finished(url)
    _greedy(client, _msg(_data_url(_image(5, 30, 30))))
    assert _finished(url) == before + 1
    anonymous = httpx.post(url + "/v1/chat/completions", json={"model": VISION, "messages": _msg(
        _data_url(_image(5, 30, 30)))}, timeout=30)
    assert anonymous.status_code == 401  # keys apply to image requests like any other


# ---- 400s ---------------------------------------------------------------------------------------


def test_a_text_only_model_answers_400_naming_it(client):
    err = _error(client, _msg(_data_url(_image(0, 30, 30))), model=TEXT)
    assert TEXT in err.message and "does not accept images" in err.message
    assert err.body["param"] == "messages[0].content[0].type" and err.body["code"] == "image_input_not_supported"


@pytest.mark.parametrize("case, code, words", [
    ("too_many", "too_many_images", "at most 2 per request"),
    ("too_many_bytes", "image_too_large", "at most 40000 bytes"),
    ("too_many_pixels", "image_too_large", "at most 90000 pixels"),
    ("not_base64", "invalid_image_url", "not valid base64"),
    ("not_an_image_type", "unsupported_image_format", "text/plain"),
    ("unsupported_format", "unsupported_image_format", "TIFF"),
    ("garbage_bytes", "unsupported_image_format", "not an image"),
    ("ftp", "invalid_image_url", "data: URL"),
])
def test_each_limit_and_bad_url_is_its_own_400(client, case, code, words):
    small = _data_url(_image(0, 20, 20))
    urls = {
        "too_many": [small, small, small],
        "too_many_bytes": [small, _data_url(_image(4, 200, 120))],  # random pixels: PNG barely compresses
        "too_many_pixels": [_data_url(_image_solid(400, 300))],
        "not_base64": ["data:image/png;base64,@@@@"],
        "not_an_image_type": ["data:text/plain;base64," + base64.b64encode(b"hello").decode()],
        "unsupported_format": [_data_url(_image(0, 20, 20, "TIFF"), "image/tiff")],
        "garbage_bytes": [_data_url(b"\x89PNG but not really")],
        "ftp": ["ftp://example.com/cat.png"],
    }[case]
    err = _error(client, _msg(*urls))
    assert err.body["code"] == code and words in err.message
    bad = {"too_many": 2, "too_many_bytes": 1}.get(case, 0)
    assert err.body["param"] == f"messages[0].content[{bad}].image_url.url"


def _image_solid(w: int, h: int) -> bytes:
    """A large but tiny-on-the-wire PNG: only its pixel count is over the limit."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_fetch_failures_and_a_timeout_are_clean_400s(client, image_host):
    missing = _error(client, _msg(image_host + "/nope.png"))
    assert missing.body["code"] == "image_fetch_failed" and "HTTP 404" in missing.message
    text = _error(client, _msg(image_host + "/notes.txt"))
    assert text.body["code"] == "unsupported_image_format"
    started = time.monotonic()
    slow = _error(client, _msg(image_host + "/slow.png"))
    assert slow.body["code"] == "image_fetch_timeout" and "1.5 s" in slow.message
    assert time.monotonic() - started < 4  # answered at the timeout, not when the slow host finished
    # and the server is fine afterwards
    assert _greedy(client, _msg(_data_url(_image(0, 30, 30)))).choices[0].finish_reason == "length"


# ---- units: the address check (no server) -------------------------------------------------------


class _VisionStub:
    model_name = "stub"
    vision = object()  # "takes images"; load_images never calls it


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/cat.png", "http://localhost/cat.png", "http://10.1.2.3/x.png",
                                 "http://[::1]/x.png", "http://169.254.169.254/latest/meta-data"])
def test_private_addresses_are_refused_by_default(url):
    import asyncio

    from autoglm.api.errors import APIError
    from autoglm.api.limits import RequestLimits
    from autoglm.api.schemas import ChatCompletionRequest
    from autoglm.api.vision import load_images

    req = ChatCompletionRequest(model="stub", messages=_msg(url))
    with pytest.raises(APIError) as info:
        asyncio.run(load_images(_VisionStub(), req, RequestLimits()))
    assert info.value.code == "image_url_not_allowed" and info.value.param.endswith("image_url.url")


def test_requests_without_images_are_untouched():
    import asyncio

    from autoglm.api.limits import RequestLimits
    from autoglm.api.schemas import ChatCompletionRequest
    from autoglm.api.vision import load_images

    req = ChatCompletionRequest(model="x", messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert asyncio.run(load_images(object(), req, RequestLimits())) is None
