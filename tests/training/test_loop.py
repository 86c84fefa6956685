"""Pure parts of the training loop: data order and checkpoint bookkeeping."""
from __future__ import annotations

import json
import random

import pytest

torch = pytest.importorskip("torch")

from autoglm.training import checkpoint  # noqa: E402
from autoglm.training.loop import epoch_order  # noqa: E402


def test_epoch_order_is_a_function_of_seed_and_epoch_and_covers_every_sample():
    a = epoch_order(10, seed=1, epoch=0, shuffle=True, per_step=4)
    assert a == epoch_order(10, seed=1, epoch=0, shuffle=True, per_step=4)
    assert a != epoch_order(10, seed=1, epoch=1, shuffle=True, per_step=4)
    assert a != epoch_order(10, seed=2, epoch=0, shuffle=True, per_step=4)
    assert len(a) == 12 and sorted(set(a)) == list(range(10)) and a[10:] == a[:2]  # wrapped to whole steps
    assert epoch_order(5, seed=1, epoch=3, shuffle=False, per_step=5) == [0, 1, 2, 3, 4]


def test_checkpoints_keep_the_two_newest_complete_and_restore_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    opt = torch.optim.AdamW([model.weight], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    root = tmp_path / "checkpoints"
    random.seed(5)
    torch.manual_seed(5)
    for step in (1, 2, 3):
        checkpoint.save(root, step, model=model, optimizer=opt, scheduler=sched, guards=[],
                        rngs=[checkpoint.rng_state()], state={"history": [step]})
    expected_next = (random.random(), torch.rand(1).item())
    (root / "step-000009").mkdir()  # a directory without state.json is not a checkpoint
    assert sorted(p.name for p in root.iterdir()) == ["step-000002", "step-000003", "step-000009"]
    assert checkpoint.latest(root).name == "step-000003"
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    state = checkpoint.load(root / "step-000003", model=model, optimizer=opt, scheduler=sched, guards=[])
    assert state["step"] == 3 and state["history"] == [3]
    assert torch.equal(model.weight, saved)
    assert (random.random(), torch.rand(1).item()) == expected_next  # RNG as it was when saved
    assert "bias" not in json.dumps(list(__import__("safetensors.torch", fromlist=["load_file"]).load_file(
        str(root / "step-000003" / "trainable.safetensors"))))  # only trainable parameters are stored
