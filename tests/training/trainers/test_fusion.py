"""The fusion trainer on the synthetic shapes-and-captions data and the tiny random CLIP: every mode
learns what needs both modalities, a missing modality falls back to what the other one knows, an
interrupted training resumes to the same weights, bad rows are named by file, line and column, and
a pipeline file trains and evaluates it (with ``search.metric`` validated against its metrics)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

from autoglm.multimodal.data import make_samples, write_jsonl  # noqa: E402
from autoglm.training.data import DataError  # noqa: E402
from autoglm.training.schema import DataConfig, FusionConfig  # noqa: E402
from autoglm.training.trainers import StageContext, create_trainer  # noqa: E402


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fusion-data")
    write_jsonl(d / "train.jsonl", make_samples(600, seed=0))
    write_jsonl(d / "test.jsonl", make_samples(200, seed=1))
    return d


@pytest.fixture()
def home(autoglm_home, monkeypatch) -> Path:
    monkeypatch.setenv("AUTOGLM_HOME", str(autoglm_home))  # the tiny CLIP is built once per session
    return autoglm_home


class Run:
    def __init__(self, root: Path, data: DataConfig, **train):
        train.setdefault("threads", 1)
        self.config = FusionConfig(trainer="fusion", **train)
        self.trainer = create_trainer("fusion", self.config, data)
        self.root = root
        self.logged: list[tuple[int | None, dict]] = []
        self.events: list = []
        self.stop_after: int | None = None

    def log(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))
        if self.stop_after is not None and step == self.stop_after:
            raise Interrupt(step)

    def ctx(self, name: str) -> StageContext:
        return StageContext(work_dir=self.root / name, progress=False, emit=self.events.append, log_metrics=self.log)

    def preprocess(self):
        return self.trainer.preprocess(self.ctx("prep"))

    def train(self, prepared: Path | None = None):
        return self.trainer.train(prepared or self.root / "prep", self.ctx("train"))

    def evaluate(self, prepared: Path | None = None):
        return self.trainer.evaluate(prepared or self.root / "prep", self.root / "train" / "model", self.ctx("eval"))


def data_config(d: Path, test: bool = True) -> DataConfig:
    return DataConfig(train=str(d / "train.jsonl"), test=str(d / "test.jsonl") if test else None, valid_fraction=0.2)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_dir, autoglm_home):
    import os

    os.environ.setdefault("AUTOGLM_HOME", str(autoglm_home))
    run = Run(tmp_path_factory.mktemp("fusion-prep"), data_config(data_dir))
    summary = run.preprocess()
    return run.root / "prep", summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, prepared):
    """``trained(mode, epochs)`` -> (Run, train metrics): each training done once per module, whoever asks first."""
    runs: dict[tuple[str, int], tuple[Run, dict]] = {}

    def get(mode: str, epochs: int) -> tuple[Run, dict]:
        if (mode, epochs) not in runs:
            run = Run(tmp_path_factory.mktemp(f"fusion-{mode}"), data_config(data_dir), mode=mode, epochs=epochs)
            runs[mode, epochs] = run, run.train(prepared[0])
        return runs[mode, epochs]

    return get


def test_preprocess_splits_and_stores_tensors(prepared):
    prep, summary = prepared
    assert summary["rows_train"] == 480 and summary["rows_valid"] == 120 and summary["rows_test"] == 200
    assert summary["classes"] == ["0", "1"]
    from autoglm.training.trainers.fusion import read_split

    test = read_split(prep, "test")
    assert test["pixel_values"].shape == (200, 3, 32, 32) and bool(test["present"].all())
    assert test["label"].tolist() == [s.label for s in make_samples(200, seed=1)]


@pytest.mark.parametrize("mode,epochs", [("early", 25), ("late", 25), ("hybrid", 15)])
def test_every_mode_learns_and_falls_back_when_a_modality_is_missing(home, trained, prepared, mode, epochs):
    run, metrics = trained(mode, epochs)
    test = run.evaluate(prepared[0])
    assert set(test) >= {"accuracy", "auc", "f1", "log_loss", "accuracy_no_image", "accuracy_no_text", "latency_ms"}
    # image alone can reach 0.75, text alone only chance (see autoglm.multimodal.data)
    assert 0.62 < test["accuracy_no_text"] < 0.86 and test["accuracy_no_image"] < 0.62
    if mode == "late":  # additive: cannot model the square/triangle XOR (best 0.875)
        assert 0.65 < test["accuracy"] < 0.88
    else:
        assert test["accuracy"] > 0.85 and test["auc"] > 0.9
    assert test["latency_ms"] > 0
    epochs_logged = [s for s, m in run.logged if "valid_accuracy" in m]
    assert epochs_logged == list(range(1, epochs + 1)) and metrics["valid_accuracy"] > 0.6
    info = json.loads((run.root / "train" / "model" / "fusion.json").read_text())
    assert info["mode"] == mode and info["classes"] == ["0", "1"] and info["finetune_encoders"] is False
    if mode != "early":
        assert set(info["modality_weights"]) == {"text", "image"} and "weight_image" in metrics


def test_interrupted_training_resumes_to_the_same_weights(home, tmp_path, data_dir, prepared):
    from safetensors.torch import load_file

    whole = Run(tmp_path / "whole", data_config(data_dir), mode="early", epochs=4)
    whole.train(prepared[0])
    broken = Run(tmp_path / "broken", data_config(data_dir), mode="early", epochs=4)
    broken.stop_after = 2
    with pytest.raises(Interrupt):
        broken.train(prepared[0])
    assert (tmp_path / "broken" / "train" / "checkpoints" / "step-000002" / "state.json").is_file()
    assert not (tmp_path / "broken" / "train" / "model").exists()
    broken.stop_after = None
    metrics = broken.train(prepared[0])
    assert metrics["resumed_from"] == 2 and any(e.action == "resumed" for e in broken.events)
    assert [s for s, m in broken.logged if "valid_accuracy" in m] == [1, 2, 3, 4]
    a = load_file(str(tmp_path / "whole" / "train" / "model" / "fusion.safetensors"))
    b = load_file(str(tmp_path / "broken" / "train" / "model" / "fusion.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_saved_model_predicts_from_raw_inputs_with_a_modality_missing(home, trained):
    from autoglm.multimodal.model import load_fusion_model

    run, _ = trained("early", 25)  # the model the early-fusion case above trained and saved
    model = load_fusion_model(run.root / "train" / "model")
    samples = make_samples(120, seed=7)
    both = model.predict([s.text for s in samples], [s.image for s in samples])
    assert sum(p == str(s.label) for p, s in zip(both, samples)) / len(samples) > 0.8
    image_only = model.predict([None] * len(samples), [s.image for s in samples])
    decided = [(p, s) for p, s in zip(image_only, samples) if s.shape in ("circle", "cross")]  # image decides
    assert sum(p == str(s.label) for p, s in decided) / len(decided) > 0.9
    with pytest.raises(ValueError, match="no modality at all"):
        model.predict([None], [None])


def bad_file(tmp_path: Path, line: int, **changes) -> Path:
    rows = [json.loads(x) for x in write_jsonl(tmp_path / "src.jsonl", make_samples(6)).read_text().splitlines()]
    rows[line - 1].update(changes)
    rows[line - 1] = {k: v for k, v in rows[line - 1].items() if v is not ...}
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("changes,column,words", [
    ({"label": ...}, "label", "the label is missing"),
    ({"text": None, "image": ""}, "image", "has neither text"),
    ({"image": "data:image/png;base64,AAAA"}, "image", "not a readable image"),
    ({"image": "missing.png"}, "image", "does not exist"),
    ({"text": 12}, "text", "expected text; got int"),
])
def test_bad_rows_are_named_before_any_work(home, tmp_path, changes, column, words):
    path = bad_file(tmp_path, 4, **changes)
    run = Run(tmp_path, DataConfig(train=str(path)))
    with pytest.raises(DataError) as info:
        run.preprocess()
    assert info.value.line == 4 and info.value.column == column and words in str(info.value)
    assert str(info.value).startswith(f"{path}:4 column '{column}'")
    assert not (tmp_path / "prep").exists()


def test_one_missing_modality_per_row_is_fine(home, tmp_path):
    rows = [json.loads(x) for x in write_jsonl(tmp_path / "t.jsonl", make_samples(40)).read_text().splitlines()]
    rows[0]["text"], rows[1]["image"] = None, None
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = Run(tmp_path, DataConfig(train=str(tmp_path / "t.jsonl"), valid_fraction=0.25), epochs=2)
    run.preprocess()
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert meta["train_no_text"] + meta["valid_no_text"] == 1 and meta["train_no_image"] + meta["valid_no_image"] == 1
    assert run.train()["epochs"] == 2


def test_a_pipeline_file_trains_each_mode_and_search_metrics_are_checked(home, tmp_path, data_dir, monkeypatch):
    from autoglm.errors import ConfigError
    from autoglm.training.loader import load_pipeline_file
    from autoglm.training.pipeline import run_pipeline
    from autoglm.tuning.space import grid_points, trial_config

    monkeypatch.setenv("AUTOGLM_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "multimodal").mkdir(parents=True)
    (tmp_path / "home" / "multimodal" / "autoglm-tiny-clip").symlink_to(home / "multimodal" / "autoglm-tiny-clip")
    text = f"""\
name: unit-fusion
data:
  train: {data_dir / 'train.jsonl'}
  test: {data_dir / 'test.jsonl'}
train:
  trainer: fusion
  epochs: 3
  threads: 1
evaluate:
  metrics: [accuracy, accuracy_no_image, accuracy_no_text, latency_ms]
tracking: {{enabled: false}}
search:
  strategy: grid
  metric: test_accuracy_no_text
  pruner: {{type: none}}
  params:
    train.mode: {{type: categorical, choices: [early, late, hybrid]}}
"""
    path = tmp_path / "fusion.yaml"
    path.write_text(text)
    config = load_pipeline_file(path)
    points = grid_points(config.search)
    assert [p["train.mode"] for p in points] == ["early", "late", "hybrid"]
    for point in points[:2]:
        result = run_pipeline(trial_config(config, point), home=tmp_path / "home", progress=False,
                              tracking=False, out=open(tmp_path / "log.txt", "a"))
        assert set(result.metrics) >= {"test_accuracy", "test_accuracy_no_image", "test_accuracy_no_text",
                                       "test_latency_ms", "valid_accuracy"}
    path.write_text(text.replace("metric: test_accuracy_no_text", "metric: test_accuracy_no_sound"))
    with pytest.raises(ConfigError, match=r"fusion.yaml:\d+ search.metric: .*test_accuracy_no_sound"):
        load_pipeline_file(path)


@pytest.mark.parametrize("extra,where,words", [
    ("  mode: middle\n", "train.mode", "expected one of early, late, hybrid; got 'middle'"),
    ("  mode: hybrid\n  heads: 5\n", "train.heads", r"hidden \(64\) to be a multiple of heads \(5\)"),
    ("  guards: [{type: explosion}]\n", r"train.guards\[0\].type", "takes only 'drift'"),
])
def test_bad_settings_are_file_line_key_errors(tmp_path, extra, where, words):
    from autoglm.errors import ConfigError
    from autoglm.training.loader import load_pipeline_file

    path = tmp_path / "f.yaml"
    path.write_text("name: f\ndata: {train: t.jsonl}\ntrain:\n  trainer: fusion\n" + extra)
    with pytest.raises(ConfigError, match=rf"f.yaml:\d+ {where}: .*{words}"):
        load_pipeline_file(path)
