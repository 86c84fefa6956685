"""Two gloo processes train exactly like one process accumulating over the same samples."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from autoglm.training.distributed import micro_batches, run_distributed, torchrun_env  # noqa: E402
from autoglm.training.schema import CausalLMConfig, DataConfig, PreprocessConfig  # noqa: E402
from autoglm.training.trainers import StageContext, create_trainer  # noqa: E402

WORDS = ["apple", "river", "cloud", "stone", "green", "tiger", "piano", "maple"]


def _trainer(tmp: Path, grad_accum: int) -> object:
    cfg = CausalLMConfig(trainer="causal-lm", method="full", batch_size=2, grad_accum=grad_accum, lr=1e-3,
                         max_steps=3, checkpoint_every=2, eval_every=3)
    return create_trainer("causal-lm", cfg, DataConfig(train=str(tmp / "train.jsonl"), valid=str(tmp / "valid.jsonl")),
                          PreprocessConfig(max_length=32))


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None])


def _rank_target(rank: int, world: int, tmp: str) -> dict:
    """Runs in each spawned process: one step's gradients, then a short training run."""
    from torch.nn.parallel import DistributedDataParallel

    from autoglm.training.loop import backward_step
    from autoglm.training.text_data import load_split

    tmp_path = Path(tmp)
    trainer = _trainer(tmp_path, grad_accum=1)
    meta = json.loads((tmp_path / "pre" / "meta.json").read_text())
    model = trainer.build_model(Path(meta["model"]))
    ddp = DistributedDataParallel(model)
    split = load_split(tmp_path / "pre", "train")
    backward_step(model, split, [0, 1, 2, 3], batch_size=2, world_size=world, rank=rank, pad_id=0, ddp=ddp)
    grads = _grads(model)
    metrics = trainer.train(tmp_path / "pre", StageContext(work_dir=tmp_path / "ddp", progress=False,
                                                           rank=rank, world_size=world))
    return {"grads": grads, "metrics": metrics}


def test_two_gloo_processes_match_one_process_with_accumulation(tmp_path, autoglm_home, monkeypatch):
    from autoglm.training.loop import backward_step
    from autoglm.training.text_data import load_split

    monkeypatch.setenv("AUTOGLM_HOME", str(autoglm_home))
    for name, words in (("train", WORDS), ("valid", WORDS[:2])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(
            {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}!"}],
             "weight": 1.0 + i % 3}) + "\n" for i, w in enumerate(words)), encoding="utf-8")
    single = _trainer(tmp_path, grad_accum=2)
    single.preprocess(StageContext(work_dir=tmp_path / "pre", progress=False))

    out = run_distributed(2, _rank_target, (str(tmp_path),), backend="gloo")

    meta = json.loads((tmp_path / "pre" / "meta.json").read_text())
    model = single.build_model(Path(meta["model"]))
    backward_step(model, load_split(tmp_path / "pre", "train"), [0, 1, 2, 3], batch_size=2, world_size=1, rank=0,
                  pad_id=0)
    one = _grads(model)
    assert one.abs().max() > 0
    assert (out["grads"] - one).abs().max().item() < 1e-6

    single.train(tmp_path / "pre", StageContext(work_dir=tmp_path / "one", progress=False))
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    h2 = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert len(h1["history"]) == len(h2["history"]) == 3
    for a, b in zip(h1["history"], h2["history"]):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-6
        assert a["tokens"] == b["tokens"]
    assert abs(h1["evals"][-1]["eval_loss"] - h2["evals"][-1]["eval_loss"]) < 1e-6
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()  # rank 0 wrote the model


def test_rank_shards_of_a_step_are_the_accumulation_micro_batches():
    step = list(range(12))
    one = micro_batches(step, 3, 1, 0)
    two = [micro_batches(step, 3, 2, r) for r in range(2)]
    assert one == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert two == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9, 10, 11]]]
    assert sorted(i for r in two for mb in r for i in mb) == step


def test_torchrun_environment_is_read_only_when_complete():
    assert torchrun_env({"RANK": "1", "WORLD_SIZE": "4"}) is None
    env = torchrun_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.2"})
    assert (env.rank, env.world_size, env.local_rank) == (5, 8, 1)
