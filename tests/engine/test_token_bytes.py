"""Exact token bytes: joined across tokens they rebuild the text, even where one token holds part
of a character."""
from __future__ import annotations

from autoglm.engine.token_bytes import TokenBytes, byte_level_alphabet


def test_the_alphabet_covers_every_byte_once():
    table = byte_level_alphabet()
    assert sorted(table.values()) == list(range(256))
    assert table["A"] == ord("A") and table["\u0120"] == ord(" ")  # "Ġ" is the space


def test_bytes_rebuild_text_including_split_characters(demo):
    _, tok = demo
    tb = TokenBytes(tok)
    text = "服务一个模型需要多少内存？ hello — 🙂 ok"
    ids = tok.encode(text, add_special_tokens=False)
    assert b"".join(bytes(tb(i)) for i in ids) == text.encode("utf-8")
    # at least one token of this text is not valid UTF-8 on its own: its text is a replacement char
    split = [i for i in ids if "\ufffd" in tok.decode([i])]
    assert split
    for i in split:
        assert bytes(tb(i)) != tok.decode([i]).encode("utf-8")


def test_special_tokens_are_their_text(demo):
    _, tok = demo
    sid = tok.convert_tokens_to_ids("<|user|>")
    assert bytes(TokenBytes(tok)(sid)) == b"<|user|>"
