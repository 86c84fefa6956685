"""Blocks compiled for training steps (``train.compile``) on the real demo model (its first two blocks): a
compiled step computes what the eager one does, evaluation and no-grad calls stay eager, hooks added after
compiling (the head masker) take effect, the trainer's loop trains the same with it, and a missing C++
compiler is a clear error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from autoglm.errors import ConfigError  # noqa: E402
from autoglm.training import compiled as compiled_mod  # noqa: E402
from autoglm.training import loop  # noqa: E402
from autoglm.training.schema import CausalLMConfig, DataConfig, PreprocessConfig  # noqa: E402
from autoglm.training.text_data import load_split, read_meta  # noqa: E402
from autoglm.training.trainers import StageContext, create_trainer  # noqa: E402

WORDS = ["apple", "river", "cloud", "stone", "green", "tiger", "piano", "maple"]


@pytest.fixture(scope="module")
def setup(autoglm_home, tmp_path_factory):
    """A LoRA trainer on the demo model's first two blocks (float32 base: compiled and eager agree to
    rounding), its preprocessed data and one batch."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOGLM_HOME", str(autoglm_home))
    tmp = tmp_path_factory.mktemp("compiled")
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w} {w}."}]}
            for w in WORDS]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]), encoding="utf-8")

    # the demo model cut to its first two blocks: a block's graph is the same, and a head mask (per-block
    # hooks: a graph per block) compiles two graphs instead of four
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from autoglm.hub.demo import ensure_demo_model

    demo = Path(ensure_demo_model("autoglm-demo", autoglm_home))
    config = AutoConfig.from_pretrained(demo)
    config.num_hidden_layers = 2
    AutoModelForCausalLM.from_pretrained(demo, config=config).save_pretrained(tmp / "base")
    AutoTokenizer.from_pretrained(demo).save_pretrained(tmp / "base")

    def make(**train):
        cfg = CausalLMConfig(trainer="causal-lm", **({"method": "lora", "batch_size": 4, "lr": 3e-3,
                                                      "model": str(tmp / "base"), "base_dtype": "float32",
                                                      "checkpoint_every": 50} | train))
        return create_trainer("causal-lm", cfg, DataConfig(train=str(tmp / "train.jsonl"),
                                                           valid=str(tmp / "valid.jsonl")), PreprocessConfig(max_length=48))

    make().preprocess(StageContext(work_dir=tmp / "pre", progress=False))
    split = load_split(tmp / "pre", "train")
    batch = loop.collate(split, range(4), int(read_meta(tmp / "pre")["pad_token_id"]), "cpu")
    yield {"make": make, "tmp": tmp, "base": Path(read_meta(tmp / "pre")["model"]), "batch": batch}
    mp.undo()


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    losses, _ = loop.sample_losses(model, batch)
    loss = losses.mean()
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_compiled_step_equals_eager_and_leaves_the_module_tree_alone(setup):
    trainer = setup["make"]()
    eager = trainer.build_model(setup["base"], compile=False)
    model = trainer.build_model(setup["base"], compile=True)
    assert compiled_mod.is_compiled(model) and not compiled_mod.is_compiled(eager)
    assert len(compiled_mod.blocks(model)) == model.config.num_hidden_layers == 2
    assert model.state_dict().keys() == eager.state_dict().keys()  # checkpoints and adapters save alike
    model.load_state_dict(eager.state_dict())
    model.train()
    eager.train()
    torch.compiler.reset()  # whatever ran before, this step has to compile
    before = _graphs()
    loss_c, grads_c = _loss_and_grads(model, setup["batch"])
    assert _graphs() > before  # it really compiled
    loss_e, grads_e = _loss_and_grads(eager, setup["batch"])
    assert grads_c.keys() == grads_e.keys() and len(grads_c) == 2 * 4 * 2  # q/k/v/o adapters A and B
    assert abs(loss_c - loss_e) <= 1e-5 * abs(loss_e)
    for name, g in grads_e.items():
        assert (grads_c[name] - g).norm() <= 1e-4 * g.norm() + 1e-9, name

    # evaluation (eval mode) and no-grad calls run the eager forward: nothing compiles for them
    graphs = _graphs()
    with torch.no_grad():
        model.eval()
        ev, _ = loop.sample_losses(model, setup["batch"])
        model.train()
        ng, _ = loop.sample_losses(model, setup["batch"])
    assert _graphs() == graphs
    torch.testing.assert_close(ev, ng)


def test_head_masks_added_after_compiling_take_effect(setup):
    from autoglm.training.guards.heads import attach_head_mask

    trainer = setup["make"]()
    model = trainer.build_model(setup["base"], compile=True)
    eager = trainer.build_model(setup["base"], compile=False)
    eager.load_state_dict(model.state_dict())
    model.train()
    eager.train()
    plain, _ = _loss_and_grads(model, setup["batch"])  # traced without hooks
    for m in (model, eager):
        attach_head_mask(m).set_masked([[0, [0, 1]], [1, [2]]])
    masked_c, grads_c = _loss_and_grads(model, setup["batch"])
    masked_e, grads_e = _loss_and_grads(eager, setup["batch"])
    assert abs(masked_c - plain) > 1e-4  # the mask changes the loss ...
    assert abs(masked_c - masked_e) <= 1e-5 * abs(masked_e)  # ... and the compiled step sees it
    name = next(n for n in grads_e if "layers.0.self_attn.o_proj.lora_A" in n)
    assert (grads_c[name] - grads_e[name]).norm() <= 1e-4 * grads_e[name].norm()


def test_the_trainer_loop_trains_the_same_compiled(setup):
    tmp = setup["tmp"]
    histories = {}
    for flag in (False, True):
        work = tmp / f"loop-{flag}"
        setup["make"](compile=flag, max_steps=4, max_grad_norm=None).train(
            tmp / "pre", StageContext(work_dir=work, progress=False))
        histories[flag] = [h["loss"] for h in json.loads((work / "history.json").read_text())["history"]]
    assert len(histories[True]) == 4 and histories[True][-1] < histories[True][0]
    for a, b in zip(histories[False], histories[True]):
        assert abs(a - b) <= 1e-4 * abs(a), histories


def test_compile_needs_a_cxx_compiler_and_blocks(setup, monkeypatch):
    trainer = setup["make"]()
    monkeypatch.setattr(compiled_mod.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        trainer.build_model(setup["base"], compile=True)
    with pytest.raises(ConfigError, match="no transformer blocks"):
        compiled_mod.compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_compile_setting_is_validated():
    assert CausalLMConfig(trainer="causal-lm").compile is False
    with pytest.raises(ValueError, match="compile"):
        CausalLMConfig(trainer="causal-lm", compile="sometimes")
