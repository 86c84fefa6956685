"""Head masking and the structure guard on the GLM-4 demo model (4 layers, 4 query heads in 2 KV groups)."""
from __future__ import annotations

import pytest
import torch

from autoglm.errors import ConfigError
from autoglm.training.events import EventBus
from autoglm.training.guards import GuardContext, create_guard
from autoglm.training.guards.heads import CONFIG_KEY, attach_head_mask, head_importance, load_head_mask

from .conftest import lm_loss


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_mask_silences_exactly_the_heads_slice(glm, batch):
    """Masking head h of layer l is the same as zeroing o_proj's input columns h*D:(h+1)*D."""
    ref = logits(glm, batch)
    masker = attach_head_mask(glm)
    masker.set_masked([[2, [1]]])
    masked = logits(glm, batch)
    assert not torch.allclose(masked, ref)
    masker.set_masked([])
    assert torch.equal(logits(glm, batch), ref)  # reversible, bit for bit
    masker.detach()
    o = glm.model.layers[2].self_attn.o_proj
    d = glm.config.head_dim
    with torch.no_grad():
        o.weight[:, d:2 * d] = 0
    assert torch.allclose(logits(glm, batch), masked, atol=1e-5)


def test_mask_survives_save_pretrained_and_attach(glm, batch, tmp_path):
    from transformers import AutoModelForCausalLM

    masker = attach_head_mask(glm)
    masker.prune([[0, [2, 3]], [3, [0]]])
    expected = logits(glm, batch)
    glm.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert load_head_mask(loaded) == [[0, [2, 3]], [3, [0]]]
    assert not torch.allclose(logits(loaded, batch), expected)  # from_pretrained alone knows no masks
    attach_head_mask(loaded)
    assert torch.equal(logits(loaded, batch), expected)


def falling(guard, ctx, values):
    for v in values:
        guard.on_evaluate(ctx, {"eval_loss": v, "accuracy": 0.5})


def make(glm, batch, **settings):
    bus = EventBus()
    ctx = GuardContext(emit=bus.emit, model=glm, validation_loss=lambda m: lm_loss(m, batch))
    return create_guard("structure", **settings), ctx, bus


def test_three_falls_prune_the_least_important_group(glm, batch):
    guard, ctx, bus = make(glm, batch, unit="group", fraction=0.1)
    importance = head_importance(glm, ctx.validation_loss)  # [L, H], before any pruning
    groups = importance.view(4, 2, 2).sum(-1)  # [L, kv]
    layer, group = divmod(int(groups.argmin()), 2)
    ref = logits(glm, batch)
    grads_before = [p.grad for p in glm.parameters()]

    falling(guard, ctx, [2.0, 2.1, 2.2])
    assert bus.events == []  # two falls so far
    falling(guard, ctx, [2.3])
    (event,) = bus.events
    assert (event.source, event.action) == ("structure", "prune-heads")
    assert load_head_mask(glm) == [[layer, [2 * group, 2 * group + 1]]]  # one whole KV group, the least important
    assert event.data["heads"] == f"{layer}:{2 * group},{2 * group + 1}" and f"layer {layer}" in event.message
    assert not torch.allclose(logits(glm, batch), ref)  # the model's output changed
    assert [p.grad for p in glm.parameters()] == grads_before  # importance touched no .grad
    assert guard.falls == 0


def test_two_falls_then_a_rise_do_nothing(glm, batch):
    guard, ctx, bus = make(glm, batch)
    falling(guard, ctx, [2.0, 2.1, 2.2, 1.9, 2.0, 2.1])  # never three in a row
    assert bus.events == [] and load_head_mask(glm) == []
    guard2, ctx2, bus2 = make(glm, batch, metric="accuracy", mode="max")
    for acc in (0.5, 0.6, 0.55, 0.5, 0.45):  # higher is better: three drops after the rise
        guard2.on_evaluate(ctx2, {"accuracy": acc})
    assert [e.action for e in bus2.events] == ["prune-heads"]


def test_auto_restores_when_the_metric_keeps_falling_and_logits_come_back_exactly(glm, batch):
    guard, ctx, bus = make(glm, batch, unit="head", fraction=0.2, action="auto")
    ref = logits(glm, batch)
    falling(guard, ctx, [1.0, 1.1, 1.2, 1.3])
    assert [e.action for e in bus.events] == ["prune-heads"]
    assert len(load_head_mask(glm)) >= 1 and glm.config.to_dict()[CONFIG_KEY]
    falling(guard, ctx, [1.4, 1.5, 1.6])
    assert [e.action for e in bus.events] == ["prune-heads", "restore-heads"]
    assert load_head_mask(glm) == [] and torch.equal(logits(glm, batch), ref)


def test_pruning_respects_kv_groups(glm, batch):
    # group unit, asking for far too much: each layer keeps exactly one whole KV group
    guard, ctx, _ = make(glm, batch, unit="group", fraction=0.9, action="prune")
    falling(guard, ctx, [1.0, 1.1, 1.2, 1.3])
    mask = dict((layer, heads) for layer, heads in load_head_mask(glm))
    assert sorted(mask) == [0, 1, 2, 3] and all(h in ([0, 1], [2, 3]) for h in mask.values())
    assert torch.isfinite(lm_loss(glm, batch))  # half the heads gone, the model still runs

    # head unit: every KV group keeps at least one query head, whatever is asked
    attach_head_mask(glm).set_masked([])
    guard, ctx, _ = make(glm, batch, unit="head", fraction=0.9, action="prune")
    falling(guard, ctx, [1.0, 1.1, 1.2, 1.3])
    masked = {(layer, h) for layer, hs in load_head_mask(glm) for h in hs}
    assert len(masked) == 8  # 2 of 4 heads in each of 4 layers
    for layer in range(4):
        for group in (0, 1):
            assert {(layer, 2 * group), (layer, 2 * group + 1)} - masked  # one left per group


def test_state_dict_reapplies_the_mask(glm, batch, demo_path):
    from transformers import AutoModelForCausalLM

    guard, ctx, _ = make(glm, batch, action="prune")
    falling(guard, ctx, [1.0, 1.1, 1.2, 1.3])
    fresh = AutoModelForCausalLM.from_pretrained(demo_path).eval()
    resumed, ctx2, _ = make(fresh, batch)
    resumed.load_state_dict(guard.state_dict())
    resumed.on_evaluate(ctx2, {"eval_loss": 1.0})
    assert load_head_mask(fresh) == load_head_mask(glm)
    assert torch.equal(logits(fresh, batch), logits(glm, batch))


def test_a_resumed_guard_that_never_pruned_hooks_nothing(glm, batch, demo_path):
    from transformers import AutoModelForCausalLM

    guard, ctx, _ = make(glm, batch, action="prune")
    falling(guard, ctx, [1.0, 1.1])  # one fall: nothing pruned, the saved mask is empty
    fresh = AutoModelForCausalLM.from_pretrained(demo_path).eval()
    resumed, ctx2, _ = make(fresh, batch)
    resumed.load_state_dict(guard.state_dict())
    resumed.on_evaluate(ctx2, {"eval_loss": 0.5})  # a rise: still nothing to prune
    assert resumed.falls == 0 and load_head_mask(fresh) == []
    # no masker, no hooks (compiled blocks would have to trace again for them)
    assert not any(m._forward_pre_hooks for m in fresh.modules())


def test_bad_settings_and_missing_metric(glm, batch):
    with pytest.raises(ConfigError, match="'patiense'.*did you mean 'patience'"):
        create_guard("structure", patiense=3)
    with pytest.raises(ConfigError, match="unit"):
        create_guard("structure", unit="layer")
    guard, ctx, _ = make(glm, batch)
    with pytest.raises(ConfigError, match="eval_loss.*accuracy"):
        guard.on_evaluate(ctx, {"accuracy": 0.3})
