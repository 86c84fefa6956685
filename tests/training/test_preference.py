"""DPO and KTO in the causal-lm trainer, on the real demo model (LoRA and full), plus the losses and data checks.

Shown: over a few steps the loss falls and the chosen answer's log-probability rises relative to the
rejected one (DPO's reward margin, measured against the frozen starting weights), desirable completions
rise and undesirable ones fall (KTO); the reference is the base (adapters disabled); bad rows are a
``file:line column`` error before anything is tokenised; the losses match their formulas.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from autoglm.training.data import DataError, read_records  # noqa: E402
from autoglm.training.preference import (  # noqa: E402
    PreferenceSettings,
    dpo_loss,
    kto_loss,
    preference_examples,
)
from autoglm.training.schema import CausalLMConfig, DataConfig, PreprocessConfig  # noqa: E402
from autoglm.training.trainers import StageContext, create_trainer  # noqa: E402

WORDS = ["apple", "river", "cloud", "stone"]


@pytest.fixture()
def home(autoglm_home, monkeypatch):
    monkeypatch.setenv("AUTOGLM_HOME", str(autoglm_home))
    return autoglm_home


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _trainer(tmp: Path, objective: str, rows: list[dict], **train):
    data = _jsonl(tmp / f"{objective}.jsonl", rows)
    cfg = CausalLMConfig(trainer="causal-lm", objective=objective,
                         **({"batch_size": 4, "lr": 5e-3, "max_steps": 8, "eval_every": 1, "checkpoint_every": 50,
                             "max_grad_norm": None} | train))
    return create_trainer("causal-lm", cfg, DataConfig(train=str(data), valid=str(data)),
                          PreprocessConfig(max_length=48))


def _run(trainer, tmp: Path) -> tuple[list[float], dict, list[dict]]:
    trainer.preprocess(StageContext(work_dir=tmp / "pre", progress=False))
    logged: list[tuple[int, dict]] = []
    metrics = trainer.train(tmp / "pre", StageContext(work_dir=tmp / "train", progress=False,
                                                      log_metrics=lambda m, s: logged.append((s, m))))
    losses = [m["train_loss"] for _, m in logged if "train_loss" in m]
    evals = json.loads((tmp / "train" / "history.json").read_text())["evals"]
    return losses, metrics, evals


def test_dpo_raises_chosen_over_rejected_with_lora(tmp_path, home):
    rows = [{"prompt": f"Say {w}.", "chosen": f"{w} {w}.", "rejected": f"{o} no."}
            for w, o in zip(WORDS, WORDS[::-1])]
    # 4 steps, evaluated after 2 and 4: loss x0.54, reward margin 5.6 -> 10.8
    trainer = _trainer(tmp_path, "dpo", rows, method="lora", max_steps=4, eval_every=2)
    losses, metrics, evals = _run(trainer, tmp_path)
    assert losses[0] == pytest.approx(math.log(2), rel=1e-3)  # the policy starts as the reference: margin 0
    assert losses[-1] < 0.7 * losses[0]
    margins = [e["reward_margin"] for e in evals]
    assert margins[-1] > margins[0] > 0  # chosen log-prob up relative to rejected, vs the starting weights
    assert metrics["reward_accuracy"] == 1.0 and metrics["reward_margin"] == pytest.approx(margins[-1])
    ev = trainer.evaluate(tmp_path / "pre", tmp_path / "train" / "model", StageContext(work_dir=tmp_path / "ev",
                                                                                        progress=False))
    assert ev["reward_margin"] == pytest.approx(margins[-1], rel=1e-3)  # the saved model, against its base


def test_kto_moves_desirable_up_and_undesirable_down_full_fine_tune(tmp_path, home):
    rows = ([{"prompt": f"Say {w}.", "completion": f"{w} {w}.", "label": True} for w in WORDS]
            + [{"messages": [{"role": "user", "content": f"Say {w}."}], "completion": "no no no.", "label": False}
               for w in WORDS])
    # 4 steps, evaluated after 2 and 4: loss 0.50 -> 0.39, rewards +6.8 / -9.4
    losses, metrics, evals = _run(_trainer(tmp_path, "kto", rows, method="full", lr=2e-4, max_steps=4, eval_every=2),
                                  tmp_path)
    assert losses[-1] < losses[0]
    assert metrics["desirable_reward"] > 0 > metrics["undesirable_reward"]
    assert evals[-1]["desirable_reward"] > evals[0]["desirable_reward"]


@pytest.mark.parametrize("objective,row,column,problem", [
    ("dpo", {"prompt": "hi", "chosen": "a"}, "rejected", "missing or empty"),
    ("dpo", {"prompt": "hi", "chosen": "same", "rejected": "same"}, "rejected", "same text"),
    ("dpo", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
             "chosen": "b", "rejected": "c"}, "messages", "ends with an assistant turn"),
    ("kto", {"prompt": "hi", "completion": "a"}, "label", "missing"),
    ("kto", {"prompt": "hi", "completion": "a", "label": "maybe"}, "label", "not true or false"),
    ("kto", {"completion": "a", "label": True}, "prompt", "missing or empty"),
])
def test_bad_rows_name_file_line_and_column(tmp_path, objective, row, column, problem):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "chosen": "x", "rejected": "y", "completion": "z",
                                          "label": True}, row])
    with pytest.raises(DataError) as err:
        preference_examples(read_records(path, "auto"), objective)
    assert err.value.line == 2 and err.value.column == column and problem in str(err.value)
    assert "d.jsonl:2" in str(err.value)


def test_losses_match_their_formulas():
    pc, pr, rc, rr = (torch.tensor([v], dtype=torch.float64) for v in (-3.0, -5.0, -4.0, -4.0))
    loss, margin = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert float(margin) == pytest.approx(2.0)
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    s = PreferenceSettings(beta=1.0)
    policy, ref = torch.tensor([-1.0, -2.0], dtype=torch.float64), torch.tensor([-2.0, -2.0], dtype=torch.float64)
    loss, reward = kto_loss(policy, ref, torch.tensor([True, False]), s)
    z = 0.5  # mean reward (1 + 0) / 2, clamped at 0
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert reward.tolist() == [1.0, 0.0]
    assert loss.tolist() == pytest.approx([1 - sig(1.0 - z), 1 - sig(z - 0.0)])
