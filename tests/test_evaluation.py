"""The Evaluation callback: metrics at test and during fit, protocol and JSON, DDP without hangs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import quiet_trainer, tiny_conditional_diffusion

from lit_genai.callbacks.ema import EMA
from lit_genai.callbacks.evaluation import Evaluation
from lit_genai.data import Digits, MNIST5k
from lit_genai.diffusion import Diffusion
from lit_genai.nn import UNet

HERE = Path(__file__).resolve().parent


_module = tiny_conditional_diffusion
_trainer = quiet_trainer


def test_test_reports_every_metric_with_the_extractor_in_the_key(tmp_path):
    evaluation = Evaluation(num_samples=40, batch_size=20, num_real=80, cache_dir=str(tmp_path / "cache"))
    trainer = _trainer(tmp_path, [evaluation, EMA(decay=0.9)], limit_test_batches=1)
    trainer.test(_module(), datamodule=MNIST5k(batch_size=16), verbose=False)
    metrics = trainer.callback_metrics
    for key in ("fid_mnist", "kid_mnist", "is_mnist", "precision_mnist", "recall_mnist"):
        assert torch.isfinite(metrics[f"test/{key}"]), key
    # An untrained model's samples are noise-like: far from the data.
    assert metrics["test/fid_mnist"] > 100
    protocol = evaluation.last_protocol
    assert protocol["num_generated"] == 40 and protocol["num_real"] == 80
    assert protocol["reference"] == "MNIST5k/train" and protocol["extractor"] == "mnist"
    assert protocol["sampler"]["ema"] is True  # evaluated under the EMA weights
    assert protocol["sampler"]["sampling_steps"] == 2
    assert any("KID subset size clamped" in note for note in protocol["notes"])
    # The results and protocol are saved as JSON (next to the checkpoint when there is one).
    saved = json.loads((tmp_path / "test.json").read_text())
    assert saved["metrics"]["test/fid_mnist"] == pytest.approx(float(metrics["test/fid_mnist"]))
    assert saved["protocol"]["num_generated"] == 40
    assert list((tmp_path / "cache").glob("MNIST5k-train-mnist-80.pt"))


def test_periodic_evaluation_during_fit(tmp_path):
    evaluation = Evaluation(
        every_n_epochs=1,
        at_test=False,
        num_samples=16,
        batch_size=16,
        num_real=50,
        metrics=("fid",),
        cache_dir=str(tmp_path),
    )
    trainer = _trainer(tmp_path, [evaluation], max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(_module(), datamodule=MNIST5k(batch_size=8))
    assert "val/fid_mnist" in trainer.callback_metrics
    assert "val/is_mnist" not in trainer.callback_metrics  # only what was asked


def test_same_seed_same_numbers(tmp_path):
    results = []
    for _ in range(2):
        evaluation = Evaluation(
            num_samples=20, batch_size=10, num_real=50, metrics=("fid", "pr"), cache_dir=str(tmp_path)
        )
        _trainer(tmp_path, [evaluation], limit_test_batches=1).test(
            _module(), datamodule=MNIST5k(batch_size=16), verbose=False
        )
        results.append(evaluation.last_results)
    assert results[0] == results[1]


def test_no_extractor_for_the_data_skips_with_a_warning(tmp_path):
    net = UNet(
        in_channels=1,
        base_channels=8,
        channel_mult=(1,),
        num_res_blocks=1,
        attention_levels=(),
        dropout=0.0,
        num_groups=4,
    )
    module = Diffusion(net, sample_shape=(1, 8, 8), num_classes=10, num_timesteps=50, sampling_steps=2)
    trainer = _trainer(tmp_path, [Evaluation(num_samples=8)], limit_test_batches=1)
    with pytest.warns(UserWarning, match="no feature extractor for Digits"):
        trainer.test(module, datamodule=Digits(batch_size=16), verbose=False)
    assert not any("fid" in k for k in trainer.callback_metrics)


def test_two_process_ddp_evaluation_completes_and_ranks_agree(tmp_path):
    done = subprocess.run(
        [sys.executable, str(HERE / "ddp_evaluation_script.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["metrics"]["test/fid_mnist"] == pytest.approx(rank1["metrics"]["test/fid_mnist"])
    assert rank0["metrics"]["test/precision_mnist"] == rank1["metrics"]["test/precision_mnist"]
    # 30 samples asked, split 15 + 15 over two ranks with different seeds, all of them gathered.
    assert rank0["protocol"]["num_generated"] == 30


def test_classification_accuracy_score_of_a_conditional_model(tmp_path):
    evaluation = Evaluation(
        num_samples=200,
        batch_size=100,
        num_real=50,
        metrics=("fid",),
        cas=True,
        cas_epochs=25,
        cache_dir=str(tmp_path),
    )
    trainer = _trainer(tmp_path, [evaluation], limit_test_batches=1)
    trainer.test(_module(), datamodule=MNIST5k(batch_size=16), verbose=False)
    cas, cas_real = (
        float(trainer.callback_metrics["test/cas"]),
        float(trainer.callback_metrics["test/cas_real"]),
    )
    # An untrained generator's samples carry no class information: near chance (10%); the same
    # classifier trained on 200 real images does clearly better.
    assert 0.0 <= cas < 0.3
    assert cas_real > cas + 0.2
