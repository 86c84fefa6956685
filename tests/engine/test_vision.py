"""Images through the engine (``autoglm.engine.vision`` and the batch runner's image prefill) on the
tiny GLM-4.1V demo: image rows, text rows and a two-image row batched together reproduce
``generate()`` token for token (so the 3-D positions, the pixel scatter and the decode positions are
right), image prompts never touch the prefix cache, and the engine core runs them whole beside
chunked text prompts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoglm.engine.runner import BatchRunner, PrefixCache
from autoglm.engine.vision import VisionProcessor, load_vision

N = 8


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    from autoglm.hub.demo import ensure_demo_model

    return ensure_demo_model("autoglm-demo-vision", tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def vlm(vision_dir):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(vision_dir, dtype=torch.float32).eval()
    vision = load_vision(vision_dir, AutoConfig.from_pretrained(vision_dir))
    return model, AutoTokenizer.from_pretrained(vision_dir), vision


def _image(seed: int, w: int, h: int):
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def _chat(tok, n_images: int, text: str) -> str:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    return tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)


def _reference(model, tok, vision: VisionProcessor, text: str, images: list) -> list[int]:
    """generate() on inputs built as transformers' Glm4vProcessor builds them: the placeholder is
    repeated in the text, then tokenized (not our token-level expansion)."""
    kwargs = {}
    if images:
        enc = vision.image_processor(images=images, return_tensors="pt")
        for grid in enc["image_grid_thw"]:
            text = text.replace("<|image|>", "<|placeholder|>" * (int(grid.prod()) // 4), 1)
        text = text.replace("<|placeholder|>", "<|image|>")
        kwargs = dict(pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"])
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    kwargs["mm_token_type_ids"] = (ids == vision.image_token_id).to(torch.int)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, min_new_tokens=N,
                         do_sample=False, eos_token_id=None, pad_token_id=0, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def _cases(tok, vision):
    specs = [(1, "what is in this picture?", [_image(0, 90, 60)]),
             (0, "a plain text question, longer than the others so rows are padded", []),
             (2, "compare them", [_image(1, 40, 120), _image(2, 64, 64)])]
    cases = []
    for n_images, question, images in specs:
        text = _chat(tok, n_images, question)
        ids = tok.encode(text, add_special_tokens=False)
        mm = vision.encode(images) if images else None
        cases.append((text, images, vision.expand(ids, mm) if mm else ids, mm))
    return cases


def test_the_demo_is_a_glm4v_with_mrope_and_an_image_processor(vlm):
    model, tok, vision = vlm
    assert type(model).__name__ == "Glm4vForConditionalGeneration"
    assert model.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert vision is not None and vision.image_token_id == tok.convert_tokens_to_ids("<|image|>")
    text = _chat(tok, 1, "hi")
    assert "<|begin_of_image|><|image|><|end_of_image|>hi" in text


def test_expand_pairs_placeholders_with_images(vlm):
    _, tok, vision = vlm
    mm = vision.encode([_image(0, 90, 60), _image(1, 28, 28)])
    assert mm.num_tokens == (6, 4)  # 90x60 -> 84x56 pixels: 6x4 patches of 14 -> 3x2 merged; 28x28 -> min 4
    ids = [1, vision.image_token_id, 2, vision.image_token_id, 3]
    assert vision.expand(ids, mm) == [1] + [vision.image_token_id] * 6 + [2] + [vision.image_token_id] * 4 + [3]
    with pytest.raises(ValueError, match="1 image placeholder"):
        vision.expand([1, vision.image_token_id], mm)


def test_load_vision_is_none_for_a_text_model():
    from autoglm.hub.demo import demo_config

    assert load_vision("/nonexistent", demo_config("autoglm-demo")) is None


@pytest.mark.parametrize("mode", ["batched", "staggered"])
def test_image_and_text_rows_batched_match_generate(vlm, mode):
    model, tok, vision = vlm
    cases = _cases(tok, vision)
    ref = [_reference(model, tok, vision, text, images) for text, images, _, _ in cases]
    assert ref[0] != _reference(model, tok, vision, cases[0][0], [_image(7, 90, 60)])  # the pixels matter
    runner = BatchRunner(model)
    outs: dict[int, list[int]] = {k: [] for k in range(3)}
    join_at = {0: 0, 1: 0, 2: 0} if mode == "batched" else {0: 0, 1: 2, 2: 4}
    for step in range(40):
        joining = [k for k, s in join_at.items() if s == step]
        if joining:
            logits = runner.prefill(joining, [cases[k][2] for k in joining], [cases[k][3] for k in joining])
            for i, k in enumerate(joining):
                outs[k].append(int(logits[i].argmax()))
        runner.remove([k for k in runner.rows if len(outs[k]) >= N])
        if not runner.rows:
            if step > max(join_at.values()):
                break
            continue
        logits = runner.decode([outs[k][-1] for k in runner.rows])
        for k, t in zip(runner.rows, logits.argmax(-1).tolist()):
            outs[k].append(t)
    assert [outs[k][:N] for k in range(3)] == ref


def test_image_prompts_neither_fill_nor_use_the_prefix_cache(vlm):
    model, tok, vision = vlm
    (_, _, image_ids, mm), (_, _, text_ids, _), _ = _cases(tok, vision)
    runner = BatchRunner(model, prefix_cache=PrefixCache(4096, min_reuse=4))
    runner.prefill(["img", "txt"], [image_ids, text_ids], [mm, None])
    runner.decode([1, 1])
    runner.remove(["img", "txt"])
    assert len(runner.prefix_cache) == 1  # the text row's cells only
    # the same image prompt again (same placeholder tokens, other pixels): no hit, runs from scratch
    other = vision.encode([_image(9, 90, 60)])
    runner.prefill(["again"], [image_ids], [other])
    assert runner.prefix_cache.hits == 0


def test_core_runs_an_image_prompt_whole_while_text_is_chunked(vlm):
    from autoglm.engine.core import EngineCore
    from autoglm.engine.io_struct import EngineRequest, SamplingParams

    model, tok, vision = vlm
    (_, _, image_ids, mm), (_, _, text_ids, _), _ = _cases(tok, vision)
    assert len(image_ids) > 8 and len(text_ids) > 8
    core = EngineCore(BatchRunner(model), tok, max_model_len=512, prefill_chunk=8)
    params = dict(max_tokens=3, temperature=0.0, ignore_eos=True)
    core.add_request(EngineRequest("img", image_ids, SamplingParams(**params), mm_inputs=mm))
    core.add_request(EngineRequest("txt", text_ids, SamplingParams(**params)))
    firsts: dict[str, int] = {}
    done: dict[str, list[int]] = {"img": [], "txt": []}

    def emit(outputs):
        for out in outputs:
            done[out.request_id] += out.token_ids

    core.step(emit)  # first step: the image prompt whole (a token out), the text prompt's first chunk
    firsts = {k: len(v) for k, v in done.items()}
    assert firsts["img"] >= 1 and firsts["txt"] == 0
    while core.has_work():
        core.step(emit)
    assert len(done["img"]) == 3 and len(done["txt"]) == 3
