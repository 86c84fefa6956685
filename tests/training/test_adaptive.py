"""The seed's adaptive learning rate: the stateless rule, the torch scheduler around it, and the
transformers callback on a real (tiny) Trainer run."""
from __future__ import annotations

import io
import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from autoglm.errors import ConfigError
from autoglm.training.adaptive import (
    BaseSchedule,
    adaptive_lr,
    schedule_from_config,
    warmup_cosine,
)
from autoglm.training.events import EventBus
from autoglm.training.schema import AdaptiveLRConfig, SchedulerConfig


def seed_rule(grad_history, base_lr=1e-3):  # the seed's code, verbatim
    variance = np.var(grad_history[-100:])
    if variance > 1e-4:
        return base_lr * 0.5
    elif variance < 1e-6:
        return base_lr * 2.0
    return base_lr


def noisy(n: int, seed: int = 0, scale: float = 1.0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(scale * (1.0 + 0.5 * rng.standard_normal(n)))  # variance ~0.25 * scale^2


def flat(n: int, scale: float = 1.0) -> list[float]:
    return [scale] * n


def middle(n: int) -> list[float]:  # alternating 1 +- 3e-3: variance 9e-6, between the seed's thresholds
    return [1.0 + (3e-3 if i % 2 else -3e-3) for i in range(n)]


# --- the seed's rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("history,expected", [
    (noisy(100), 5e-4), (flat(100), 2e-3), (middle(100), 1e-3),
])
def test_seed_rule_three_branches(history, expected):
    assert adaptive_lr(history) == pytest.approx(expected, rel=0, abs=0)
    assert adaptive_lr(history) == seed_rule(history)


@pytest.mark.parametrize("spread", [0.0, 1e-4, 5e-4, 1e-3, 3e-3, 5e-3, 1e-2, 3e-2, 1.0])
def test_matches_the_seed_code_on_random_histories(spread):
    rng = np.random.default_rng(7)
    history = list(1.0 + spread * rng.standard_normal(250))
    assert adaptive_lr(history, 0.01) == seed_rule(history, 0.01)


def test_thresholds_are_strict():
    history = [1.0, 1.5, 0.7, 1.2]
    v = float(np.var(history))
    assert adaptive_lr(history, 1.0, high=v, low=v / 10) == 1.0  # equal to high: not above it
    assert adaptive_lr(history, 1.0, high=v * 10, low=v) == 1.0  # equal to low: not below it
    assert adaptive_lr(history, 1.0, high=v * 0.999, low=v / 10) == 0.5
    assert adaptive_lr(history, 1.0, high=v * 10, low=v * 1.001) == 2.0


def test_window_truncation():
    assert adaptive_lr(noisy(50) + flat(100)) == 2e-3  # the noise is older than the window
    assert adaptive_lr(noisy(50) + flat(99)) == 5e-4  # one noisy norm left in it
    assert adaptive_lr(noisy(10) + flat(5), window=5) == 2e-3
    assert adaptive_lr(np.array(flat(3) + noisy(3)), window=3) == 5e-4  # arrays work too


def test_short_or_non_finite_history_returns_base_lr():
    assert adaptive_lr([], 0.1) == 0.1
    assert adaptive_lr([3.0], 0.1) == 0.1
    assert adaptive_lr(flat(99) + [float("nan")], 0.1) == 0.1
    assert adaptive_lr(flat(99) + [float("inf")], 0.1) == 0.1


@pytest.mark.parametrize("kwargs,needle", [
    ({"window": 1}, "window=1"), ({"high": 1e-6, "low": 1e-6}, "high=1e-06"), ({"down": 0.0}, "down=0.0"),
    ({"up": 0.5}, "up=0.5"), ({"low": -1.0}, "low=-1.0"),
])
def test_bad_rule_settings_are_config_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        adaptive_lr(flat(10), **kwargs)


# --- the scheduler ----------------------------------------------------------------------------------


def make(lr: float = 1e-3, groups: int = 1, **kwargs):
    from autoglm.training.adaptive import GradVarianceLR

    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(groups)]
    opt = torch.optim.SGD([{"params": [p], "lr": lr * (i + 1)} for i, p in enumerate(params)], lr=lr)
    return opt, GradVarianceLR(opt, **kwargs)


def drive(opt, sched, norms) -> list[float]:
    """One optimizer step per norm; the rate each step used."""
    used = []
    for n in norms:
        used.append(opt.param_groups[0]["lr"])
        sched.observe(n)
        opt.step()
        sched.step()
    return used


def test_scheduler_is_a_torch_lr_scheduler_and_is_cheap_to_import():
    from autoglm.training.adaptive import GradVarianceLR

    assert issubclass(GradVarianceLR, torch.optim.lr_scheduler.LRScheduler)
    code = ("import sys, autoglm.training.adaptive as a, autoglm.training as t; "
            "assert t.adaptive_lr is a.adaptive_lr; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_halves_on_noise_doubles_on_flat_stays_in_between():
    opt, s = make(window=10)
    used = drive(opt, s, noisy(10))
    assert used == [1e-3] * 10 and s.get_last_lr() == [5e-4]  # decided after the 10th step, applies to the 11th
    opt, s = make(window=10)
    drive(opt, s, flat(10))
    assert s.get_last_lr() == [2e-3]
    opt, s = make(window=10)
    drive(opt, s, middle(40))
    assert s.get_last_lr() == [1e-3] and s.factors == [1.0]
    assert s.last_statistic == pytest.approx(9e-6)


def test_decision_agrees_with_the_seed_function():
    for norms in (noisy(100, seed=3), flat(100), middle(100)):
        opt, s = make()
        drive(opt, s, norms)
        assert s.get_last_lr()[0] == pytest.approx(adaptive_lr(norms))


def test_every_param_group_moves_with_its_own_base():
    opt, s = make(groups=2, window=5)
    drive(opt, s, noisy(5))
    assert s.get_last_lr() == pytest.approx([5e-4, 1e-3])


def test_cadence_and_cooldown():
    opt, s = make(window=3)
    events = []
    s.on_change = events.append
    drive(opt, s, noisy(12))
    assert [e.step for e in events] == [3, 6, 9, 12]  # history cleared after each change: a fresh window
    opt, s = make(window=3, cooldown=2)
    events = []
    s.on_change = events.append
    drive(opt, s, noisy(14))
    assert [e.step for e in events] == [3, 8, 13]  # 2 settling steps not recorded, then 3 new norms
    assert s.get_last_lr() == pytest.approx([1.25e-4])


def test_min_and_max_lr_hold_the_rate_and_say_so():
    opt, s = make(window=2, min_lr=3e-4)
    events = []
    s.on_change = events.append
    drive(opt, s, [1.0, 2.0] * 4)
    assert [e.action for e in events] == ["lr-down", "clamped", "clamped", "clamped"]
    assert s.get_last_lr() == pytest.approx([3e-4])
    assert "held at the bound" in events[1].message and events[1].data["lr_after"] == pytest.approx(3e-4)
    opt, s = make(window=2, max_lr=3e-3)
    drive(opt, s, flat(6))
    assert s.get_last_lr() == pytest.approx([3e-3])


def test_relative_statistic_is_scale_free_raw_variance_is_not():
    norms = [1.0 + 0.05 * math.sin(i) for i in range(60)]  # relative variance ~1.2e-3
    runs = {}
    for scale in (1.0, 1000.0):
        opt, s = make(window=20, statistic="relative", high=1e-3, low=1e-5)
        drive(opt, s, [scale * n for n in norms])
        runs[scale] = s.factors[0]
    assert runs[1.0] == runs[1000.0] == 0.125
    flat_ish = [1.0 + 1e-3 * math.sin(i) for i in range(20)]  # raw variance 5e-7 at scale 1, 0.5 at scale 1000
    decisions = {}
    for statistic in ("relative", "variance"):
        for scale in (1.0, 1000.0):
            opt, s = make(window=20, statistic=statistic)
            drive(opt, s, [scale * n for n in flat_ish])
            decisions[statistic, scale] = s.factors[0]
    assert decisions["relative", 1.0] == decisions["relative", 1000.0] == 2.0
    assert decisions["variance", 1.0] == 2.0 and decisions["variance", 1000.0] == 0.5


def test_composes_with_warmup_and_cosine():
    schedule = warmup_cosine(5, 40, min_ratio=0.1)
    opt, s = make(lr=1e-2, window=8, base_schedule=schedule)
    used = drive(opt, s, noisy(40, seed=1))
    factor = 1.0
    for step, lr in enumerate(used):
        factor = 0.5 ** (step // 8)  # a change after every 8th step
        assert lr == pytest.approx(1e-2 * schedule(step) * factor, rel=1e-12), step
    assert schedule(0) == pytest.approx(0.2) and schedule(4) == 1.0 and schedule(40) == pytest.approx(0.1)


def test_schedules_from_config_and_bad_values():
    cos = schedule_from_config(SchedulerConfig(type="cosine", warmup_steps=2, min_lr_ratio=0.5), 10)
    assert cos == BaseSchedule("cosine", 2, 10, 0.5) and cos(10) == pytest.approx(0.5)
    lin = schedule_from_config(SchedulerConfig(type="linear"), 10)
    assert lin(5) == pytest.approx(0.5)
    assert schedule_from_config(SchedulerConfig(), 10)(7) == 1.0
    with pytest.raises(ConfigError, match="total_steps=0"):
        warmup_cosine(0, 0)
    with pytest.raises(ConfigError, match="max_lr=0.0001"):
        make(min_lr=1e-3, max_lr=1e-4)
    with pytest.raises(ConfigError, match="statistic='std'"):
        make(statistic="std")
    opt, s = make()
    with pytest.raises(ConfigError, match="epoch=3"):
        s.step(3)


def test_from_config_enabled_and_disabled():
    from autoglm.training.adaptive import GradVarianceLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    on = GradVarianceLR.from_config(opt, AdaptiveLRConfig(window=4, min_lr=4e-4), SchedulerConfig(), 100)
    drive(opt, on, noisy(12))
    assert on.get_last_lr() == pytest.approx([4e-4])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    off = GradVarianceLR.from_config(opt, AdaptiveLRConfig(enabled=False, window=4),
                                     SchedulerConfig(type="linear", warmup_steps=2), 20)
    used = drive(opt, off, noisy(12))
    assert off.factors == [1.0]
    expected = [5e-4, 1e-3] + [1e-3 * (1 - (k - 2) / 18) for k in range(2, 12)]  # warmup 2, then linear to 0
    assert used == pytest.approx(expected)


def test_non_finite_norms_and_skipped_steps_do_not_advance():
    opt, s = make(window=3)
    drive(opt, s, [1.0, 2.0])
    assert s.observe(float("inf")) is False and s.observe(torch.tensor(float("nan"))) is False
    s.step()
    s.step(skipped=True)
    assert s.last_epoch == 2 and s.rule.history == [1.0, 2.0]
    drive(opt, s, [1.0])
    assert s.last_epoch == 3 and s.get_last_lr() == [5e-4]


def test_amp_overflow_step_is_skipped_with_a_real_grad_scaler():
    torch.manual_seed(0)
    from autoglm.training.adaptive import GradVarianceLR

    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sched = GradVarianceLR(opt, window=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    recorded = []
    for step in range(6):
        opt.zero_grad()
        poison = float("inf") if step == 2 else 1.0
        loss = (model(torch.randn(4, 3)) * poison).pow(2).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
        recorded.append(sched.observe(norm))
        scaler.step(opt)
        scaler.update()
        sched.step()
    assert recorded == [True, True, False, True, True, True]
    assert sched.last_epoch == 5 and scaler.get_scale() == 2.0**7
    assert all(math.isfinite(v) for v in sched.rule.history)


def _train(sched_state=None, model_state=None, opt_state=None, start=0, stop=30):
    """A real little regression trained with accumulation 2; returns (rates used, states at stop)."""
    from autoglm.training.adaptive import GradVarianceLR

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = GradVarianceLR(opt, window=5, high=1e-2, low=1e-3, cooldown=1, base_schedule=warmup_cosine(3, 30))
    if sched_state is not None:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
        sched.load_state_dict(sched_state)
    used = []
    for step in range(start, stop):
        gen = torch.Generator().manual_seed(step)  # the data depends on the step, not the process
        for _ in range(2):  # gradient accumulation: one observe per optimizer step
            x = torch.randn(8, 4, generator=gen)
            (model(x) - x.sum(1, keepdim=True)).pow(2).mean().div(2).backward()
        used.append(opt.param_groups[0]["lr"])
        sched.observe(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
        opt.step()
        opt.zero_grad()
        sched.step()
    return used, sched, model.state_dict(), opt.state_dict()


def test_state_dict_resume_continues_identically():
    whole, sched, _, _ = _train()
    assert sched.factors != [1.0]  # the rule did act in this run, so the comparison means something
    first, s1, m1, o1 = _train(stop=15)
    assert len(s1.rule.history) == 3  # saved mid-window: the history itself must survive
    buf = io.BytesIO()
    torch.save({"sched": s1.state_dict(), "model": m1, "opt": o1}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # plain data only
    rest, s2, _, _ = _train(ckpt["sched"], ckpt["model"], ckpt["opt"], start=15)
    assert first + rest == whole
    assert s2.state_dict() == sched.state_dict()


def test_events_carry_the_reason_and_are_logged(caplog):
    bus = EventBus()
    opt, s = make(window=4, on_change=bus.emit)
    with caplog.at_level(logging.INFO, logger="autoglm.training"):
        drive(opt, s, [1.0, 1.1, 0.9, 1.0] + flat(4))
    down, up = bus.of("lr", "grad-variance")
    assert (down.action, down.step, up.action, up.step) == ("lr-down", 4, "lr-up", 8)
    assert down.message == "lr 0.001 -> 0.0005: gradient-norm variance 0.005 > 0.0001 over the last 4 steps"
    assert up.message.startswith("lr 0.0005 -> 0.001: gradient-norm variance 0 < 1e-06")
    assert down.data["value"] == pytest.approx(0.005) and down.data["factor"] == 0.5
    logged = [r.getMessage() for r in caplog.records if r.name == "autoglm.training"]
    assert sum(down.message in line for line in logged) == 1 and sum(up.message in line for line in logged) == 1


# --- the transformers callback ----------------------------------------------------------------------


def test_callback_on_a_real_trainer(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from autoglm.training.adaptive import GradVarianceCallback

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (40, 12), generator=gen)]

    class Spy(TrainerCallback):  # runs after ours: sees the rate the optimizer is about to use
        applied: list[float] = []
        after: list[float] = []

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
            self.applied.append(optimizer.param_groups[0]["lr"])

        def on_optimizer_step(self, args, state, control, optimizer=None, **kw):
            self.after.append(optimizer.param_groups[0]["lr"])

    events = []
    ours = GradVarianceCallback(window=3, high=1e-12, low=1e-13, min_lr=1.5e-4, on_change=events.append)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, learning_rate=1e-3, lr_scheduler_type="constant",
                             max_grad_norm=0.5, logging_steps=1, report_to="none", save_strategy="no",
                             use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[ours, Spy()])
    trainer.train()
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert len(ours.norms) == 10
    assert ours.norms == pytest.approx(logged, rel=1e-4)  # the pre-clipping norm HF reports
    assert max(logged) > 0.5  # clipping was active, so measuring after it would have differed
    assert [(e.action, e.step) for e in events] == [("lr-down", 3), ("lr-down", 6), ("clamped", 9)]
    assert Spy.applied == pytest.approx([1e-3] * 3 + [5e-4] * 3 + [2.5e-4] * 3 + [1.5e-4])
    assert Spy.after == [1e-3] * 10  # HF's scheduler gets its own rate back after each step
    assert ours._hooks == []


def test_callback_divides_out_the_amp_loss_scale():
    from accelerate.optimizer import AcceleratedOptimizer

    from autoglm.training.adaptive import GradVarianceCallback

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = AcceleratedOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3), device_placement=False, scaler=scaler)
    cb = GradVarianceCallback(window=2)
    cb.on_train_begin(None, None, None, model=model)
    scaler.scale(model(torch.randn(5, 3)).pow(2).mean()).backward()  # the hooks see scaled gradients
    scaler.unscale_(opt.optimizer)
    true = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9).item()
    cb.on_pre_optimizer_step(None, None, None, optimizer=opt)
    assert cb._norm == pytest.approx(true, rel=1e-5) and true < 100  # not 1024 times too large
    cb.on_train_end(None, None, None)
