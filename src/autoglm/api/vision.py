"""Images in chat messages: ``image_url`` content parts -> decoded, checked PIL images -> model inputs.

A part is ``{"type": "image_url", "image_url": {"url": URL}}`` (or ``"image_url": URL``), URL being a
``data:image/...;base64,...`` URL or an ``http(s)://`` URL. :func:`load_images` (async, before the
prompt is built) checks, in this order, with a 400 naming the part (``param``) for each:

1. the model takes images at all (a text-only model: the 400 names the model, ``param`` the part's type);
2. at most ``max_images`` parts in the request;
3. each image's bytes: a data URL must be base64 of an ``image/*`` type; a URL is fetched with
   ``image_fetch_timeout`` for the whole fetch (connect to last byte), no more than 3 redirects, and,
   unless ``image_fetch_private``, never from a loopback, private, link-local or reserved address (a
   server must not be a proxy into its own network); at most ``max_image_bytes`` either way;
4. the decoded image: PNG, JPEG, WebP, GIF (first frame) or BMP, at most ``max_image_pixels``
   (checked from the header, before the pixels are decoded).

Then :func:`template_content` gives the chat template ``{"type": "image"}`` parts where the images go,
and :func:`attach_images` (in the worker thread that tokenizes) turns the images into the engine's
pixel inputs and repeats each placeholder token as often as the image has tokens. The engine side is
``engine.vision`` (:class:`autoglm.engine.vision.VisionProcessor`), used through its two methods only.

Knows httpx, Pillow and the OpenAI content-part shapes; not the model, not torch.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from autoglm.api.errors import APIError
from autoglm.api.limits import RequestLimits

__all__ = ["ImagePart", "image_parts", "load_images", "template_content", "attach_images", "FORMATS"]

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # what Pillow decodes here and vision models are trained on
_MAX_REDIRECTS = 3
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+(?:=[^;,]*)?)*),", re.ASCII)
VISION_EXTRA_HINT = "pip install 'autoglm[vision]' (Pillow)"


@dataclass(frozen=True)
class ImagePart:
    param: str  # messages[i].content[j].image_url.url
    url: str


def image_parts(req: Any) -> list[ImagePart]:
    """Every ``image_url`` part of the chat request, in message order; a 400 for a malformed one."""
    out: list[ImagePart] = []
    for i, m in enumerate(req.messages):
        content = m.content
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            where = f"messages[{i}].content[{j}].image_url"
            value = part.get("image_url")
            url = value.get("url") if isinstance(value, dict) else value
            if not isinstance(url, str) or not url:
                raise APIError(f"{where} must be an object with a 'url' string (a data: URL or an http(s) URL).",
                               param=where)
            out.append(ImagePart(f"{where}.url", url))
    return out


def template_content(content: Any, where: str) -> Any:
    """Message content for a vision model's chat template: ``image_url`` parts become
    ``{"type": "image"}`` (the template writes the placeholder there), text parts stay."""
    if not isinstance(content, list):
        return content if content is not None else ""
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            parts.append({"type": "image"})
        elif kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "text":
            raise APIError(f"{where}.content[{j}] is a 'text' part without a string 'text' field.",
                           param=f"{where}.content[{j}].text")
        else:
            raise APIError(f"{where}.content[{j}] has type {kind!r}; this server accepts 'text' and 'image_url' "
                           "content parts.", param=f"{where}.content[{j}].type", code="unsupported_content_type")
    return parts


async def load_images(engine: Any, req: Any, limits: RequestLimits) -> list[Any] | None:
    """The request's images as RGB PIL images (None when it has no ``image_url`` part)."""
    parts = image_parts(req)
    if not parts:
        return None
    if getattr(engine, "vision", None) is None:
        name = getattr(engine, "model_name", "this model")
        where = parts[0].param.rsplit(".image_url", 1)[0]  # messages[i].content[j]: its type is what is refused
        raise APIError(f"The model {name!r} does not accept images: it is a text-only model, and {where} is an "
                       "'image_url' part. Send text only, or ask a vision model (e.g. glm-4.1v-9b-thinking, "
                       "glm-4.5v, autoglm-demo-vision).", param=f"{where}.type", code="image_input_not_supported")
    if len(parts) > limits.max_images:
        raise APIError(f"This request has {len(parts)} images; this server takes at most {limits.max_images} per "
                       "request (see max_images).", param=parts[limits.max_images].param, code="too_many_images")
    blobs = await asyncio.gather(*(_image_bytes(p, limits) for p in parts))
    return await asyncio.to_thread(lambda: [_decode(p, b, limits) for p, b in zip(parts, blobs)])


def attach_images(engine: Any, prompt_ids: list[int], images: list[Any]) -> tuple[list[int], Any]:
    """(prompt ids with each image's placeholder tokens, the engine's image inputs). Blocking."""
    vision = engine.vision
    inputs = vision.encode(images)
    try:
        return vision.expand(prompt_ids, inputs), inputs
    except ValueError as exc:
        raise APIError(f"The chat template of this model did not place the images: {exc}. Put each image_url "
                       "part in a user message.", param="messages") from None


# ---- bytes ------------------------------------------------------------------------------------


def _too_large(part: ImagePart, size: int | str, limits: RequestLimits) -> APIError:
    return APIError(f"The image at {part.param} is {size} bytes; this server takes at most {limits.max_image_bytes} "
                    "bytes per image (see max_image_bytes). Send a smaller image.", param=part.param,
                    code="image_too_large")


async def _image_bytes(part: ImagePart, limits: RequestLimits) -> bytes:
    url = part.url.strip()
    if url[:5].lower() == "data:":
        return _data_url_bytes(part, url, limits)
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in ("http", "https"):
        raise APIError(f"{part.param} must be a data: URL (data:image/png;base64,...) or an http(s) URL, not "
                       f"{url[:40]!r}.", param=part.param, code="invalid_image_url")
    try:
        return await asyncio.wait_for(_fetch(part, url, limits), timeout=limits.image_fetch_timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise APIError(f"Fetching the image at {part.param} ({url[:100]}) did not finish within "
                       f"{limits.image_fetch_timeout:g} s (see image_fetch_timeout). Send it as a data: URL or "
                       "from a faster host.", param=part.param, code="image_fetch_timeout") from None


def _data_url_bytes(part: ImagePart, url: str, limits: RequestLimits) -> bytes:
    m = _DATA_URL.match(url)
    if m is None:
        raise APIError(f"{part.param} is not a valid data: URL; use data:image/png;base64,<base64 bytes>.",
                       param=part.param, code="invalid_image_url")
    mime = (m.group("mime") or "").lower()
    params = [p.lower() for p in m.group("params").split(";") if p]
    if not mime.startswith("image/"):
        raise APIError(f"{part.param} is a data: URL of type {mime or 'text/plain'!r}; send an image "
                       f"({', '.join('image/' + f.lower() for f in FORMATS)}).", param=part.param,
                       code="unsupported_image_format")
    if "base64" not in params:
        raise APIError(f"{part.param} must be base64-encoded (data:{mime};base64,...).", param=part.param,
                       code="invalid_image_url")
    payload = url[m.end():]
    if len(payload) * 3 // 4 > limits.max_image_bytes + 3:  # before decoding: a string length
        raise _too_large(part, f"about {len(payload) * 3 // 4}", limits)
    try:
        data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(f"{part.param} is a data: URL whose base64 payload is not valid base64.", param=part.param,
                       code="invalid_image_url") from None
    if len(data) > limits.max_image_bytes:
        raise _too_large(part, len(data), limits)
    if not data:
        raise APIError(f"{part.param} is an empty data: URL.", param=part.param, code="invalid_image_url")
    return data


async def _check_host(part: ImagePart, url: str, limits: RequestLimits) -> None:
    """400 unless every address ``url``'s host resolves to is public (or private ones are allowed)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise APIError(f"{part.param} has no host: {url[:100]!r}.", param=part.param, code="invalid_image_url")
    if limits.image_fetch_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise APIError(f"Could not fetch the image at {part.param}: the host {host!r} does not resolve ({exc}).",
                       param=part.param, code="image_fetch_failed") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            raise APIError(f"The image URL at {part.param} names {host!r}, a loopback, private or reserved address "
                           f"({ip}); this server fetches images only from public addresses (see "
                           "image_fetch_private). Send the image as a data: URL.", param=part.param,
                           code="image_url_not_allowed")


async def _fetch(part: ImagePart, url: str, limits: RequestLimits) -> bytes:
    import httpx

    async with httpx.AsyncClient(timeout=limits.image_fetch_timeout, follow_redirects=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            await _check_host(part, url, limits)
            try:
                async with client.stream("GET", url, headers={"Accept": "image/*"}) as resp:
                    if resp.is_redirect and "location" in resp.headers:
                        url = urljoin(url, resp.headers["location"])
                        if urlsplit(url).scheme.lower() not in ("http", "https"):
                            break
                        continue
                    if resp.status_code != 200:
                        raise APIError(f"Could not fetch the image at {part.param}: {url[:100]} answered HTTP "
                                       f"{resp.status_code}.", param=part.param, code="image_fetch_failed")
                    declared = resp.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limits.max_image_bytes:
                        raise _too_large(part, int(declared), limits)
                    data = bytearray()
                    async for chunk in resp.aiter_bytes():
                        data += chunk
                        if len(data) > limits.max_image_bytes:
                            raise _too_large(part, f"more than {limits.max_image_bytes}", limits)
                    return bytes(data)
            except httpx.TimeoutException:
                raise asyncio.TimeoutError() from None
            except httpx.HTTPError as exc:
                raise APIError(f"Could not fetch the image at {part.param} ({url[:100]}): "
                               f"{type(exc).__name__}: {exc}", param=part.param, code="image_fetch_failed") from None
    raise APIError(f"Could not fetch the image at {part.param}: more than {_MAX_REDIRECTS} redirects, or a redirect "
                   "to a non-http(s) URL.", param=part.param, code="image_fetch_failed")


# ---- pixels -----------------------------------------------------------------------------------


def _decode(part: ImagePart, data: bytes, limits: RequestLimits) -> Any:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise APIError(f"This server cannot decode images: Pillow is not installed ({VISION_EXTRA_HINT}).", 501,
                       code="not_implemented") from None
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError:
        raise APIError(f"The image at {part.param} has more pixels than this server takes "
                       f"({limits.max_image_pixels}; see max_image_pixels).", param=part.param,
                       code="image_too_large") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise APIError(f"The bytes at {part.param} are not an image this server can read; send "
                       f"{', '.join(FORMATS)}.", param=part.param, code="unsupported_image_format") from None
    if img.format not in FORMATS:
        raise APIError(f"The image at {part.param} is {img.format}; this server takes {', '.join(FORMATS)}.",
                       param=part.param, code="unsupported_image_format")
    width, height = img.size
    if width * height > limits.max_image_pixels:
        raise APIError(f"The image at {part.param} is {width}x{height} = {width * height} pixels; this server takes "
                       f"at most {limits.max_image_pixels} pixels per image (see max_image_pixels). Downscale it.",
                       param=part.param, code="image_too_large")
    try:
        img.seek(0)  # an animation: its first frame
        return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data: the client's bytes
        raise APIError(f"The image at {part.param} could not be decoded ({img.format}: {exc}).", param=part.param,
                       code="unsupported_image_format") from None
