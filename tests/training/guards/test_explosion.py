"""Explosion guard on real training: an injected spike is caught on its own step, the right layer is
restored (weights and Adam state) and the step skipped; 1,000 normal Adam steps raise nothing."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from autoglm.errors import ConfigError
from autoglm.training.events import EventBus
from autoglm.training.guards import GuardContext, create_guard
from autoglm.training.guards.explosion import layer_of

from .conftest import lm_loss


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 16] -> [B, 1]
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Run:
    """A small regression problem trained with Adam, the guard called the way a trainer must call it."""

    def __init__(self, **settings) -> None:
        torch.manual_seed(0)
        self.model = MLP()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.bus = EventBus()
        self.guard = create_guard("explosion", **settings)
        self.ctx = GuardContext(emit=self.bus.emit, model=self.model, optimizer=self.opt)
        self.w = torch.randn(16, 1)
        self.skipped = 0

    def backward(self) -> None:
        x = torch.randn(32, 16)
        y = x @ self.w + 0.1 * torch.randn(32, 1)
        self.opt.zero_grad()
        loss = (self.model(x) - y).pow(2).mean()
        loss.backward()
        self.ctx.loss = float(loss)

    def finish(self) -> bool:
        skip = self.guard.after_backward(self.ctx)
        if skip:
            self.skipped += 1
        else:
            self.opt.step()
        self.ctx.step += 1
        return skip

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.backward()
            self.finish()


def test_layer_grouping():
    assert layer_of("model.layers.3.mlp.down_proj.weight") == "model.layers.3"
    assert layer_of("model.embed_tokens.weight") == "model.embed_tokens"
    assert layer_of("lm_head.weight") == "lm_head"
    assert layer_of("fc2.bias") == "fc2"


def test_thousand_normal_steps_raise_no_alarm():
    run = Run()
    run.steps(1000)
    assert run.bus.events == [] and run.skipped == 0
    assert run.guard.good_steps == 1000
    assert run.ctx.loss < 0.1  # it really trained


def test_spike_is_caught_on_its_step_and_the_layer_restored():
    run = Run(snapshot_every=10)
    run.steps(55)  # the last snapshot is from good step 50
    snap = run.guard.snapshot
    assert snap["step"] == 50
    run.backward()
    run.model.fc2.weight.grad.mul_(1e4)  # the injected spike
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    adam_before = run.opt.state[run.model.fc2.weight]["exp_avg"].clone()
    assert run.finish() is True  # caught on this very step, which is skipped

    (event,) = run.bus.events
    assert (event.kind, event.source, event.action, event.step) == ("guard", "explosion", "reset-layer", 55)
    assert event.data["layer"] == "fc2" and event.data["z"] > 6 and "fc2" in event.message
    fc2 = run.model.fc2.weight
    assert torch.equal(fc2, snap["params"]["fc2.weight"]) and not torch.equal(fc2, before["fc2.weight"])
    state = run.opt.state[fc2]
    assert torch.equal(state["exp_avg"], snap["optim"]["fc2.weight"]["exp_avg"])
    assert not torch.equal(state["exp_avg"], adam_before)
    for name in ("fc1.weight", "fc3.weight"):  # other layers untouched, and the step did not move them
        assert torch.equal(dict(run.model.named_parameters())[name], before[name])
    assert all(p.grad is None for p in run.model.parameters())
    assert len(run.guard.total) == 55  # the spike's norm is not in the statistics
    run.steps(200)  # training carries on without further alarms
    assert len(run.bus.events) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_is_caught_even_during_warmup(bad):
    run = Run(warmup=20)
    run.steps(3)
    run.backward()
    run.model.fc1.bias.grad[0] = bad
    assert run.finish() is True
    (event,) = run.bus.events
    assert event.data["layer"] == "fc1" and event.data["nonfinite"] == 1
    assert torch.isfinite(run.model.fc1.bias).all()


def test_reinit_action_resets_the_layer_and_its_optimizer_state():
    run = Run(action="reinit")
    run.steps(30)
    run.backward()
    run.model.fc3.weight.grad.mul_(1e5)
    before = run.model.fc3.weight.detach().clone()
    assert run.finish() is True
    assert run.bus.events[0].data["layer"] == "fc3" and run.bus.events[0].data["restored"] == 0
    assert not torch.equal(run.model.fc3.weight, before)
    assert run.model.fc3.weight not in run.opt.state and run.model.fc3.bias not in run.opt.state
    assert run.model.fc2.weight in run.opt.state


def test_state_dict_keeps_the_statistics():
    run = Run()
    run.steps(40)
    other = create_guard("explosion")
    other.load_state_dict(run.guard.state_dict())
    assert other.good_steps == 40 and list(other.total) == list(run.guard.total)
    assert other.layers.keys() == run.guard.layers.keys() and other.snapshot is None


def test_spike_in_a_glm_decoder_layer(glm, batch):
    opt = torch.optim.AdamW(glm.parameters(), lr=1e-4)
    bus = EventBus()
    guard = create_guard("explosion", warmup=8, snapshot_every=4)
    ctx = GuardContext(emit=bus.emit, model=glm, optimizer=opt)
    glm.train()
    for step in range(13):
        opt.zero_grad()
        lm_loss(glm, batch[:, : 12 + step % 5]).backward()
        ctx.step = step
        if step == 12:
            for p in glm.model.layers[1].parameters():
                p.grad.mul_(1e3)
            before = glm.model.layers[1].self_attn.q_proj.weight.detach().clone()
        if not guard.after_backward(ctx):
            opt.step()
    (event,) = bus.events
    assert event.data["layer"] == "model.layers.1" and event.step == 12
    q = glm.model.layers[1].self_attn.q_proj.weight
    assert torch.equal(q, guard.snapshot["params"]["model.layers.1.self_attn.q_proj.weight"])
    assert not torch.equal(q, before)
    assert math.isfinite(float(lm_loss(glm, batch)))


def test_bad_settings():
    with pytest.raises(ConfigError, match="z_treshold.*did you mean 'z_threshold'"):
        create_guard("explosion", z_treshold=3)
    with pytest.raises(ConfigError, match="restore' or 'reinit"):
        create_guard("explosion", action="reset")


def test_reinit_of_a_glm_layer_uses_the_models_own_init(glm, batch):
    opt = torch.optim.AdamW(glm.parameters(), lr=1e-4)
    bus = EventBus()
    guard = create_guard("explosion", action="reinit")
    ctx = GuardContext(emit=bus.emit, model=glm, optimizer=opt)
    for step in range(4):
        opt.zero_grad()
        lm_loss(glm, batch).backward()
        ctx.step = step
        if step == 3:
            glm.model.layers[2].mlp.down_proj.weight.grad[0, 0] = float("nan")
        if not guard.after_backward(ctx):
            opt.step()
    layer = glm.model.layers[2]
    assert bus.events[0].data["layer"] == "model.layers.2"
    assert torch.equal(layer.input_layernorm.weight, torch.ones_like(layer.input_layernorm.weight))
    assert abs(float(layer.self_attn.q_proj.weight.std()) - glm.config.initializer_range) < 0.002
    assert layer.self_attn.q_proj.weight not in opt.state
    assert not torch.equal(glm.model.layers[1].input_layernorm.weight,
                           torch.ones_like(glm.model.layers[1].input_layernorm.weight))  # other layers kept
