"""Incremental detokenization: released text equals the whole decode, characters split across tokens
are released whole, and the end of a sequence releases everything its tokens hold."""
from __future__ import annotations

from autoglm.engine.detokenizer import IncrementalDetokenizer


def _stream(tok, ids, **kw):
    d = IncrementalDetokenizer(tok, **kw)
    parts = [d.add(i)[0] for i in ids]
    return d, parts


def test_streamed_text_is_the_whole_decode_and_never_half_a_character(demo):
    _, tok = demo
    text = "服务一个模型 🙂 hello"
    ids = tok.encode(text, add_special_tokens=False)
    d, parts = _stream(tok, ids)
    assert "".join(parts) + d.flush() == text
    assert not any("\ufffd" in p for p in parts)


def test_flush_releases_tokens_that_never_completed_a_character(demo):
    """The sequence ends (max_tokens) one byte short of a character: the text still holds every
    token before it, and the incomplete bytes show as U+FFFD, as a whole decode shows them."""
    _, tok = demo
    ids = tok.encode("一个🙂", add_special_tokens=False)
    cut = ids[:-1]  # the emoji's last byte never came
    assert tok.decode(cut).endswith("\ufffd")
    d, parts = _stream(tok, cut)
    assert "".join(parts) + d.flush() == tok.decode(cut)


def test_stop_string_is_cut_and_never_streamed_in_part(demo):
    _, tok = demo
    ids = tok.encode("one two STOP three", add_special_tokens=False)
    d = IncrementalDetokenizer(tok, stop=["STOP"])
    released, stopped = "", False
    for i in ids:
        out, stopped = d.add(i)
        released += out
        assert "ST" not in released or stopped
        if stopped:
            break
    assert stopped and d.stopped_by == "STOP" and released == "one two "
