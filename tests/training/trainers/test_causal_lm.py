"""The causal-lm trainer on the real demo model: masks, weights, learning, output, resume, bad data."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from autoglm.training.data import DataError, read_records  # noqa: E402
from autoglm.training.schema import CausalLMConfig, DataConfig, PreprocessConfig  # noqa: E402
from autoglm.training.text_data import encode_chat, examples_from_records, stop_token_ids  # noqa: E402
from autoglm.training.trainers import StageContext, create_trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def home(autoglm_home, monkeypatch):
    monkeypatch.setenv("AUTOGLM_HOME", str(autoglm_home))
    return autoglm_home


@pytest.fixture()
def demo_dir(home):
    from autoglm.hub.demo import ensure_demo_model

    return Path(ensure_demo_model("autoglm-demo", home))


def write_chats(path: Path, n: int = 4) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w} {w}."}]}
            for w in ["apple", "river", "cloud", "stone", "green", "tiger", "piano", "maple"][:n]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make(tmp: Path, **train) -> object:
    data = write_chats(tmp / "train.jsonl", 4)
    write_chats(tmp / "valid.jsonl", 2)
    cfg = CausalLMConfig(trainer="causal-lm", **({"batch_size": 4, "lr": 3e-3, "checkpoint_every": 5} | train))
    return create_trainer("causal-lm", cfg, DataConfig(train=str(data), valid=str(tmp / "valid.jsonl")),
                          PreprocessConfig(max_length=48))


def ctx(path: Path, **kw) -> StageContext:
    return StageContext(work_dir=path, progress=False, **kw)


def test_labels_cover_only_assistant_turns_and_their_stop_token(demo_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_dir)
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 2+3?"},
            {"role": "assistant", "content": "5"}, {"role": "user", "content": "and 3+4?"},
            {"role": "assistant", "content": "seven"}]
    enc = encode_chat(tok, chat, 512, stop_token_ids(tok, demo_dir))
    targets = [i for i, label in enumerate(enc.labels) if label != -100]
    assert all(enc.labels[i] == enc.input_ids[i] for i in targets)
    # two runs of targets: "5" then the <|user|> that ends the turn; "seven" then the appended end of text
    runs, cur = [], [targets[0]]
    for i in targets[1:]:
        if i == cur[-1] + 1:
            cur.append(i)
        else:
            runs.append(cur)
            cur = [i]
    runs.append(cur)
    assert [tok.decode([enc.input_ids[i] for i in r]) for r in runs] == ["5<|user|>", "seven<|endoftext|>"]
    prompt_ids = tok.apply_chat_template(chat[:2], tokenize=True, add_generation_prompt=True)["input_ids"]
    assert targets[0] == len(prompt_ids)  # the first target is the first token after "<|assistant|>\n"
    short = encode_chat(tok, chat, 8, stop_token_ids(tok, demo_dir))
    assert len(short.input_ids) == 8 and short.truncated and all(x == -100 for x in short.labels)


def test_weights_scale_each_samples_share_of_the_step_loss(demo_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoglm.training.loop import backward_step, collate, sample_losses
    from autoglm.training.text_data import Split

    tok = AutoTokenizer.from_pretrained(demo_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_dir)
    encs = [encode_chat(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 64)
            for q, a in [("hi", "hello there"), ("count", "one two three four")]]
    ids, labels = [e.input_ids for e in encs], [e.labels for e in encs]
    with torch.no_grad():
        per_sample, _ = sample_losses(model, collate(Split(ids, labels, [1.0, 1.0]), [0, 1], 0))
    l0, l1 = per_sample.tolist()
    weighted = Split(ids, labels, [1.0, 3.0])
    loss, _ = backward_step(model, weighted, [0, 1], batch_size=1, world_size=1, rank=0, pad_id=0)
    assert loss == pytest.approx((1 * l0 + 3 * l1) / 4, rel=1e-6)
    assert abs(loss - (l0 + l1) / 2) > 1e-3  # the weights did change it
    model.zero_grad()
    backward_step(model, Split(ids, labels, [0.0, 1.0]), [0, 1], batch_size=2, world_size=1, rank=0, pad_id=0)
    g_zero = model.lm_head.weight.grad.clone()
    model.zero_grad()
    backward_step(model, Split(ids[1:], labels[1:], [1.0]), [0], batch_size=1, world_size=1, rank=0, pad_id=0)
    torch.testing.assert_close(g_zero, model.lm_head.weight.grad, rtol=1e-4, atol=1e-7)  # weight 0: as if the sample were absent


@pytest.mark.parametrize("line, column, problem", [
    ({"messages": [{"content": "hi"}]}, "messages", "message 1 has no 'role'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "wizard", "content": "a"}]}, "messages", "unknown role"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}, "messages", "message 2 has no 'content'"),
    ({"messages": [{"role": "user", "content": "q"}]}, "messages", "no assistant message"),
    ({"prompt": "q", "completion": "  "}, "completion", "missing or empty"),
    ({"completion": "a"}, "prompt", "missing or empty"),
    ({"text": "a"}, "messages", "is missing"),
    ({"prompt": "q", "completion": "a", "weight": "heavy"}, "weight", "not a number"),
    ({"prompt": "q", "completion": "a", "weight": -1}, "weight", ">= 0"),
])
def test_bad_records_name_file_line_and_column(tmp_path, line, column, problem):
    path = tmp_path / "bad.jsonl"
    good = {"prompt": "fine", "completion": "yes"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n" + json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        examples_from_records(read_records(path))
    assert str(err.value).startswith(f"{path}:3 column {column!r}: ")
    assert problem in str(err.value)


def test_bad_csv_weight_fails_preprocess_before_tokenising(tmp_path, home):
    path = tmp_path / "rows.csv"
    path.write_text("prompt,completion,weight\nq1,a1,1\nq2,a2,lots\n", encoding="utf-8")
    trainer = create_trainer("causal-lm", CausalLMConfig(trainer="causal-lm"), DataConfig(train=str(path)))
    with pytest.raises(DataError, match=r"rows\.csv:3 column 'weight'"):
        trainer.preprocess(ctx(tmp_path / "pre"))
    assert not (tmp_path / "pre" / "meta.json").exists()


def _greedy(model, tok, prompts, n=8):
    out = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


def test_lora_learns_and_adapter_and_merged_outputs_agree(tmp_path, home):
    from autoglm.config import EngineSettings
    from autoglm.engine.backends.transformers import load_transformers_model
    from autoglm.training.trainers.causal_lm import load_model_dir

    lora = {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]}
    trainer = make(tmp_path, method="lora", merge=False, max_steps=12, max_grad_norm=None, lora=lora)
    trainer.preprocess(ctx(tmp_path / "pre"))
    logged = []
    metrics = trainer.train(tmp_path / "pre", ctx(tmp_path / "train", log_metrics=lambda m, s: logged.append((s, m))))
    losses = [m["train_loss"] for _, m in logged if "train_loss" in m]
    assert len(losses) == 12 and losses[-1] < 0.7 * losses[0]  # memorising four short chats
    assert metrics["eval_loss"] > 0 and metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["eval_loss"])
    adapter = tmp_path / "adapter"
    (tmp_path / "train" / "model").rename(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]).is_absolute() and (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "tokenizer.json").is_file() and (adapter / "generation_config.json").is_file()

    # the same run with merge: true resumes at its last step and writes only the merged model
    merged_trainer = make(tmp_path, method="lora", merge=True, max_steps=12, max_grad_norm=None, lora=lora)
    again = merged_trainer.train(tmp_path / "pre", ctx(tmp_path / "train"))
    assert again["resumed_from"] == 12
    merged = tmp_path / "train" / "model"
    assert not (merged / "adapter_config.json").exists() and (merged / "config.json").is_file()

    peft_model, tok = load_model_dir(adapter)
    prompts = ["Say apple.", "Say cloud.", "Say nothing."]
    expected = _greedy(peft_model, tok, prompts)
    served = load_transformers_model(EngineSettings(model=str(merged), quantize="fp32", device="cpu",
                                                    store_dir=home))  # the path `autoglm serve` loads through
    assert _greedy(served.model, served.tokenizer, prompts) == expected
    assert served.tokenizer.chat_template == tok.chat_template
    ev = merged_trainer.evaluate(tmp_path / "pre", merged, ctx(tmp_path / "eval"))
    ev_adapter = merged_trainer.evaluate(tmp_path / "pre", adapter, ctx(tmp_path / "eval"))
    assert ev["eval_loss"] == pytest.approx(ev_adapter["eval_loss"], rel=1e-4)


def test_full_fine_tune_learns(tmp_path, home):
    trainer = make(tmp_path, method="full", max_steps=6, lr=1e-3)
    trainer.preprocess(ctx(tmp_path / "pre"))
    logged = []
    trainer.train(tmp_path / "pre", ctx(tmp_path / "train", log_metrics=lambda m, s: logged.append(m)))
    losses = [m["train_loss"] for m in logged if "train_loss" in m]
    assert losses[-1] < 0.7 * losses[0]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "train" / "model")
    assert sum(p.numel() for p in model.parameters()) > 5_000_000


RESUME_SCRIPT = """
import json, sys
from pathlib import Path
from autoglm.training.schema import CausalLMConfig, DataConfig, PreprocessConfig
from autoglm.training.trainers import StageContext, create_trainer
tmp = Path(sys.argv[1])
cfg = CausalLMConfig(trainer="causal-lm", method="lora", batch_size=2, lr=3e-3, max_steps=6, checkpoint_every=2,
                     eval_every=3)
trainer = create_trainer("causal-lm", cfg, DataConfig(train=str(tmp / "train.jsonl"), valid=str(tmp / "valid.jsonl")),
                         PreprocessConfig(max_length=48))
trainer.train(tmp / "pre", StageContext(work_dir=Path(sys.argv[2]), progress=False, seed=3))
"""


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, home):
    from safetensors.torch import load_file

    make(tmp_path).preprocess(ctx(tmp_path / "pre"))
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT, encoding="utf-8")
    env = {**os.environ, "AUTOGLM_HOME": str(home), "PYTHONPATH": str(REPO / "src")}

    def run(work: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(tmp_path), str(work)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    killed = tmp_path / "killed"
    proc = run(killed)
    deadline = time.monotonic() + 90
    while not (killed / "checkpoints" / "step-000002").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists()  # it really died mid-run
    # debris of a kill during a checkpoint write: must be ignored
    (killed / "checkpoints" / ".step-000003.tmp").mkdir(exist_ok=True)
    shutil.rmtree(killed / "checkpoints" / "step-000004", ignore_errors=True)
    (killed / "checkpoints" / "step-000004").mkdir()  # no state.json: incomplete
    rerun = run(killed)
    straight = tmp_path / "straight"  # the uninterrupted run, in this process
    sys_argv = sys.argv
    try:
        sys.argv = ["run.py", str(tmp_path), str(straight)]
        exec(compile(RESUME_SCRIPT, "run.py", "exec"), {"__name__": "resume_run"})
    finally:
        sys.argv = sys_argv
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()[-2000:]
    a = json.loads((killed / "history.json").read_text())
    b = json.loads((straight / "history.json").read_text())
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert len(a["history"]) == 6 and a["evals"] == b["evals"]
    wa = load_file(killed / "model" / "model.safetensors")
    wb = load_file(straight / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
