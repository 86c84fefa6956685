"""The guards inside the causal-lm trainer's loop on the real demo model: each acts when its condition is
created (a gradient spike, an evaluation metric falling three rounds in a row, noisy gradient norms for
the adaptive rate), does nothing when training is normal, and its action lands in the saved model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from autoglm.training import loop  # noqa: E402
from autoglm.training.events import EventBus  # noqa: E402
from autoglm.training.schema import CausalLMConfig, DataConfig, PreprocessConfig  # noqa: E402
from autoglm.training.trainers import StageContext, create_trainer  # noqa: E402
from autoglm.training.trainers.causal_lm import CausalLMTrainer  # noqa: E402

WORDS = ["apple", "river", "cloud", "stone", "green", "tiger", "piano", "maple"]


@pytest.fixture()
def home(autoglm_home, monkeypatch):
    monkeypatch.setenv("AUTOGLM_HOME", str(autoglm_home))
    return autoglm_home


def trained(tmp: Path, bus: EventBus, **train) -> tuple[dict, Path]:
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w} {w}."}]}
            for w in WORDS]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    cfg = CausalLMConfig.model_validate({"trainer": "causal-lm", "batch_size": 4, "lr": 3e-3,
                                         "checkpoint_every": 50, **train})
    trainer = create_trainer("causal-lm", cfg, DataConfig(train=str(tmp / "train.jsonl"), valid=str(tmp / "valid.jsonl")),
                             PreprocessConfig(max_length=48))
    prepared, work = tmp / "prepared", tmp / "work"
    prepared.mkdir()
    work.mkdir()
    trainer.preprocess(StageContext(work_dir=prepared, progress=False))
    metrics = trainer.train(prepared, StageContext(work_dir=work, progress=False, emit=bus.emit))
    return metrics, work / "model"


def spike_at(monkeypatch, step: int, factor: float = 1e4) -> None:
    """Multiply one layer's gradients by ``factor`` in optimizer step ``step`` (1-based)."""
    build = CausalLMTrainer.build_model

    def build_with_spike(self, *args, **kwargs):
        model = build(self, *args, **kwargs)
        target = next(p for n, p in model.named_parameters() if p.requires_grad and "layers.2." in n)
        calls = {"n": 0}

        def hook(grad):
            calls["n"] += 1  # batch_size 4 and no accumulation: one backward per optimizer step
            return grad * factor if calls["n"] == step else grad

        target.register_hook(hook)
        return model

    monkeypatch.setattr(CausalLMTrainer, "build_model", build_with_spike)


def test_explosion_guard_resets_the_layer_and_skips_only_the_spiked_step(tmp_path, home, monkeypatch):
    spike_at(monkeypatch, step=6)
    bus = EventBus()
    metrics, _ = trained(tmp_path, bus, max_steps=8, guards=[{"type": "explosion", "warmup": 3}])
    events = bus.of("guard", "explosion")
    assert [(e.action, e.step) for e in events] == [("reset-layer", 5)]  # steps count from 0: the 6th
    assert "layers.2" in events[0].message
    assert metrics["skipped_steps"] == 1 and metrics["steps"] == 8  # two good steps after the spiked one
    assert metrics["train_loss"] == metrics["train_loss"]  # finite: training went on


def test_explosion_guard_is_quiet_on_normal_training(tmp_path, home):
    bus = EventBus()
    metrics, _ = trained(tmp_path, bus, max_steps=8, guards=[{"type": "explosion", "warmup": 3}])
    assert bus.of("guard", "explosion") == [] and metrics["skipped_steps"] == 0


def falling_metric(monkeypatch) -> None:
    """The evaluation metric worsens every round (real eval loss + a growing offset)."""
    real = loop.evaluate_split
    rounds = {"n": 0}

    def worse(*args, **kwargs):
        out = real(*args, **kwargs)
        rounds["n"] += 1
        return {**out, "eval_loss": out["eval_loss"] + 5.0 * rounds["n"]}  # outgrows the real improvement

    monkeypatch.setattr(loop, "evaluate_split", worse)


def test_structure_guard_prunes_heads_after_three_falling_rounds_and_the_saved_model_keeps_it(tmp_path, home,
                                                                                              monkeypatch):
    falling_metric(monkeypatch)
    bus = EventBus()
    _, model_dir = trained(tmp_path, bus, max_steps=4, eval_every=1, method="full",  # four rounds: three falling
                           guards=[{"type": "structure", "patience": 3, "action": "prune"}])
    events = bus.of("guard", "structure")
    assert [e.action for e in events] == ["prune-heads"]
    config = json.loads((model_dir / "config.json").read_text())
    masked = config["autoglm_head_mask"]
    assert masked and all(heads for _, heads in masked)
    from safetensors.torch import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    dim = config["head_dim"]
    for layer, heads in masked:  # baked: the masked heads' o_proj columns are zero in the saved weights
        w = weights[f"model.layers.{layer}.self_attn.o_proj.weight"]
        for h in heads:
            assert torch.count_nonzero(w[:, h * dim:(h + 1) * dim]) == 0


def test_structure_guard_is_quiet_while_the_metric_improves(tmp_path, home):
    bus = EventBus()
    _, model_dir = trained(tmp_path, bus, max_steps=4, eval_every=1, method="full",
                           guards=[{"type": "structure", "patience": 3}])
    assert bus.of("guard", "structure") == []
    assert "autoglm_head_mask" not in json.loads((model_dir / "config.json").read_text())


def test_adaptive_lr_changes_the_rate_in_the_loop_with_a_reason(tmp_path, home):
    bus = EventBus()
    # the window is full after 4 steps: the rule decides from then on
    metrics, _ = trained(tmp_path, bus, max_steps=6, adaptive_lr={"enabled": True, "window": 4, "high": 1e-12,
                                                                 "low": 1e-13})
    changes = bus.of("lr", "grad-variance")
    assert changes and changes[0].action == "lr-down" and "variance" in changes[0].message
    (tmp_path / "b").mkdir()
    quiet = EventBus()
    trained(tmp_path / "b", quiet, max_steps=6)
    assert quiet.of("lr") == []  # off by default: the base schedule only
