"""Images in the Responses API, served for real: ``input_image`` parts through ``POST /v1/responses`` with the
official openai SDK against the ``autoglm deploy`` of tests/api/test_vision.py (the tiny random GLM-4.1V demo
``autoglm-demo-vision`` beside the text-only ``autoglm-demo``, gateway keys, small image limits). An image
request answers (and streams) what the chat route answers for the same image, which tests/api/test_vision.py
shows equals transformers ``generate()``; the text-only model is a 400 naming it; an over-limit image and a
``file_id`` image are 400s naming the input part. Plus units of the conversion (no server). The demo's weights are
random: its text is noise, so only equality is asserted."""
from __future__ import annotations

import asyncio

import pytest

from tests.api.test_vision import (  # noqa: F401 - server, client, vision_dir: module fixtures, one deploy here
    LIMITS,
    TEXT,
    VISION,
    _data_url,
    _image,
    client,
    server,
    vision_dir,
)

N = 6


def _input(*urls: str, text: str = "describe it", **image: str) -> list[dict]:
    parts = [{"type": "input_text", "text": text}] + [{"type": "input_image", "image_url": u, **image} for u in urls]
    return [{"role": "user", "content": parts}]


def _chat_text(client, url: str, text: str) -> str:
    """What the chat route answers for the same image and text (same order of parts)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": text},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    r = client.chat.completions.create(model=VISION, messages=messages, temperature=0, max_tokens=N)
    return r.choices[0].message.content


def _error(client, input_, model=VISION, **kw):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as info:
        client.responses.create(model=model, input=input_, max_output_tokens=2, **kw)
    return info.value


def test_an_input_image_is_answered_like_the_chat_route(client):
    url = _data_url(_image(0, 90, 60))
    r = client.responses.create(model=VISION, input=_input(url, text="what is this?", detail="auto"), temperature=0,
                                max_output_tokens=N)
    assert r.status in ("completed", "incomplete") and r.output[0].type == "message"
    assert r.usage.input_tokens > 6  # the image's placeholder tokens count as input tokens
    assert 0 < r.usage.output_tokens <= N
    assert r.output_text == _chat_text(client, url, "what is this?")
    other = client.responses.create(model=VISION, input=_input(_data_url(_image(7, 30, 90)), text="what is this?"),
                                    temperature=0, max_output_tokens=N)
    assert other.usage.input_tokens != r.usage.input_tokens  # a differently shaped image: another token count


def test_an_input_image_streams_the_same_answer(client):
    url = _data_url(_image(1, 64, 64))
    plain = client.responses.create(model=VISION, input=_input(url), temperature=0, max_output_tokens=N)
    events = list(client.responses.create(model=VISION, input=_input(url), temperature=0, max_output_tokens=N,
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == plain.output_text
    assert events[-1].response.output_text == plain.output_text
    assert events[-1].response.usage.input_tokens == plain.usage.input_tokens


def test_a_text_only_model_answers_400_naming_it(client):
    err = _error(client, _input(_data_url(_image(0, 30, 30))), model=TEXT)
    assert TEXT in err.message and "does not accept images" in err.message and "'input_image' part" in err.message
    assert err.body["param"] == "input[0].content[1].type" and err.body["code"] == "image_input_not_supported"


def test_an_over_limit_image_is_a_400_naming_the_part(client):
    big = _data_url(_image(4, 200, 120))  # random pixels: more than max_image_bytes as PNG
    # instructions and an earlier item shift the chat messages; the 400 still names the Responses part
    input_ = [{"role": "user", "content": "first, a plain question"}] + _input(_data_url(_image(0, 20, 20)), big)
    err = _error(client, input_, instructions="be brief")
    assert err.body["code"] == "image_too_large" and err.body["param"] == "input[1].content[2].image_url"
    assert f"at most {LIMITS['max_image_bytes']} bytes" in err.message
    assert "input[1].content[2].image_url" in err.message and "messages[" not in err.message
    streamed = _error(client, input_, instructions="be brief", stream=True)  # refused before anything streams
    assert streamed.body["param"] == "input[1].content[2].image_url"
    pixels = _error(client, _input(_data_url(_solid(400, 300))))
    assert pixels.body["code"] == "image_too_large" and pixels.body["param"] == "input[0].content[1].image_url"


def test_a_file_id_image_is_a_clear_400(client):
    err = _error(client, [{"role": "user", "content": [{"type": "input_text", "text": "see"},
                                                        {"type": "input_image", "file_id": "file-abc123",
                                                         "detail": "auto"}]}])
    assert err.body["param"] == "input[0].content[1].file_id" and err.body["code"] == "file_id_not_supported"
    assert "file ids are not supported" in err.message


def _solid(w: int, h: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (20, 160, 60)).save(buf, format="PNG")
    return buf.getvalue()


# ---- units: the conversion (no server) ---------------------------------------------------------


def _chat(body: dict, history: list | None = None):
    from autoglm.api.responses_convert import to_chat_request
    from autoglm.api.schemas import ResponsesRequest

    return to_chat_request(ResponsesRequest.model_validate({"model": "m", **body}), history or [])


def test_input_image_parts_become_image_url_parts_in_order():
    turn = _chat({"instructions": "sys", "input": [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA",
                                      "detail": "low"}, {"type": "input_text", "text": "and?"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
    ]}, history=[{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}])
    assert turn.sources == ["instructions", "previous_response_id", "previous_response_id", "input[0]", "input[1]",
                            "input[2]", "input[3]"]
    assert turn.chat.messages[5].content == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "text", "text": "and?"}]
    assert turn.chat.messages[6].content == "ab"  # a text-only message stays a string, as before images


@pytest.mark.parametrize("part, param, words", [
    ({"type": "input_image"}, "input[0].content[0].image_url", "without an 'image_url' string"),
    ({"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "ultra"},
     "input[0].content[0].detail", "auto, low, high"),
    ({"type": "input_file", "file_id": "file-1"}, "input[0].content[1].type", "no audio or files"),
])
def test_malformed_parts_are_400s_naming_them(part, param, words):
    from autoglm.api.errors import APIError

    content = [part] if part["type"] == "input_image" else [{"type": "input_image", "image_url": "x"}, part]
    with pytest.raises(APIError) as info:
        _chat({"input": [{"role": "user", "content": content}]})
    assert info.value.param == param and words in info.value.message


class _VisionStub:
    model_name = "stub"
    vision = object()  # "takes images"; load_images never calls it


def test_a_private_address_is_refused_and_named_as_the_input_part():
    from autoglm.api.errors import APIError
    from autoglm.api.limits import RequestLimits
    from autoglm.api.responses_convert import remap_error
    from autoglm.api.vision import load_images

    turn = _chat({"instructions": "sys", "input": _input("http://127.0.0.1:9/cat.png")})
    with pytest.raises(APIError) as info:
        asyncio.run(load_images(_VisionStub(), turn.chat, RequestLimits()))
    err = remap_error(info.value, turn.sources)
    assert err.code == "image_url_not_allowed" and err.param == "input[0].content[1].image_url"
    assert "input[0].content[1].image_url" in err.message and "messages[" not in err.message


def test_an_image_of_the_stored_conversation_is_named_by_previous_response_id():
    from autoglm.api.errors import APIError
    from autoglm.api.limits import RequestLimits
    from autoglm.api.responses_convert import remap_error
    from autoglm.api.vision import load_images

    earlier = _chat({"input": _input("data:image/png;base64,AAAA")}).turn
    turn = _chat({"input": "and now?"}, history=earlier)
    with pytest.raises(APIError) as info:
        asyncio.run(load_images(object(), turn.chat, RequestLimits()))  # a text-only model
    err = remap_error(info.value, turn.sources)
    assert err.param == "previous_response_id" and "continued by previous_response_id" in err.message
