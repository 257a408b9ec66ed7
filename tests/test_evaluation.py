"""The Evaluation callback: metrics at test and during fit, the contract it reads, the protocol and
JSON, the real-feature cache key, conditioning accuracy, DDP against one process, and the gathering of
CAS's training samples over ranks with unequal shares or none."""

import json
import math
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_evaluation_script import METRICS, NUM_REAL, NUM_SAMPLES, RealDigits, run
from helpers import quiet_trainer, tiny_conditional_diffusion
from torch.utils.data import DataLoader

from lit_genai.callbacks.ema import EMA
from lit_genai.callbacks.evaluation import Evaluation
from lit_genai.data import Digits, MNIST5k
from lit_genai.metrics.cache import real_features
from lit_genai.metrics.features import get_extractor
from lit_genai.metrics.gather import gather_labelled
from lit_genai.metrics.quality import QualityMetrics

_trainer = quiet_trainer


def _test(tmp_path, module, callbacks, datamodule=None):
    trainer = _trainer(tmp_path, callbacks, limit_test_batches=1)
    trainer.test(module, datamodule=datamodule or MNIST5k(batch_size=16), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_test_reports_every_metric_with_the_extractor_in_the_key(tmp_path):
    # A real (untrained, tiny) diffusion model, under EMA weights.
    evaluation = Evaluation(num_samples=40, batch_size=20, num_real=80, cache_dir=str(tmp_path / "cache"))
    metrics = _test(tmp_path, tiny_conditional_diffusion(), [evaluation, EMA(decay=0.9)])
    for key in ("fid_mnist", "kid_mnist", "is_mnist", "precision_mnist", "recall_mnist", "cond_acc_mnist"):
        assert f"test/{key}" in metrics, key
    # An untrained model's samples are noise-like: far from the data.
    assert metrics["test/fid_mnist"] > 100
    protocol = evaluation.last_protocol
    assert protocol["num_generated"] == 40 and protocol["num_real"] == 80
    assert protocol["reference"] == "MNIST5k/train" and protocol["extractor"] == "mnist"
    assert protocol["sampler"]["ema"] is True  # evaluated under the EMA weights
    assert protocol["sampler"]["steps"] == 2  # from the module's sampling_settings()
    assert "sampling_steps" not in protocol["sampler"]  # one name per setting
    assert any("KID subset size clamped" in note for note in protocol["notes"])
    # The results and protocol are saved as JSON (next to the checkpoint when there is one).
    saved = json.loads((tmp_path / "test.json").read_text())
    assert saved["metrics"]["test/fid_mnist"] == pytest.approx(metrics["test/fid_mnist"])
    assert saved["metrics"]["test/cond_acc_mnist"] == pytest.approx(metrics["test/cond_acc_mnist"])
    assert saved["protocol"]["num_generated"] == 40
    assert len(list((tmp_path / "cache").glob("MNIST5k-train-mnist-80-*.pt"))) == 1


def test_the_protocol_records_the_modules_sampling_settings_and_the_options(tmp_path):
    evaluation = Evaluation(
        num_samples=20, batch_size=10, num_real=50, metrics=("fid",), cache_dir=str(tmp_path), seed=3
    )
    _test(tmp_path, RealDigits(), [evaluation])
    assert evaluation.last_protocol["sampler"] == {"ignore_labels": False, "seed": 3, "ema": False}
    options = Evaluation(
        num_samples=20,
        batch_size=10,
        num_real=50,
        metrics=("fid",),
        cache_dir=str(tmp_path),
        sampling={"ignore_labels": True},  # passed to sample() and recorded
    )
    metrics = _test(tmp_path, RealDigits(), [options])
    assert options.last_protocol["sampler"]["ignore_labels"] is True
    assert metrics["test/cond_acc_mnist"] < 0.5  # the option reached sample(): labels were ignored


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
    trainer.fit(RealDigits(), datamodule=MNIST5k(batch_size=8))
    assert "val/fid_mnist" in trainer.callback_metrics
    assert "val/is_mnist" not in trainer.callback_metrics  # only what was asked


def test_same_seed_same_numbers_at_any_batch_size_other_seed_other_numbers(tmp_path):
    results = []
    for seed, batch_size in ((0, 10), (0, 7), (1, 10)):
        evaluation = Evaluation(
            num_samples=20,
            batch_size=batch_size,
            num_real=50,
            metrics=("fid", "pr"),
            cache_dir=str(tmp_path),
            seed=seed,
        )
        _test(tmp_path, RealDigits(), [evaluation])
        results.append(evaluation.last_results)
    # sample i comes from seed + i, whatever the batch size; the numbers agree to float round-off
    # (a batched convolution's sums may be ordered by the batch size on some CPUs)
    assert results[0].keys() == results[1].keys()
    for key, value in results[0].items():
        assert results[1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert results[0]["fid_mnist"] != results[2]["fid_mnist"]  # the seed picks the samples


def test_the_feature_cache_is_keyed_on_the_data_configuration(tmp_path):
    cache = tmp_path / "cache"

    def evaluate(datamodule):
        evaluation = Evaluation(
            num_samples=20, batch_size=10, num_real=50, metrics=("fid",), cache_dir=str(cache)
        )
        return _test(tmp_path, RealDigits(), [evaluation], datamodule)["test/fid_mnist"]

    first = evaluate(MNIST5k(seed=0))
    (path,) = cache.glob("MNIST5k-train-mnist-50-*.pt")
    written = path.stat().st_mtime_ns
    other_split = evaluate(MNIST5k(seed=1))  # another permutation: other training images
    assert len(list(cache.glob("*.pt"))) == 2
    assert other_split != first
    # Loading options do not decide the images: the first file is read again, not rewritten.
    again = evaluate(MNIST5k(seed=0, batch_size=64))
    assert len(list(cache.glob("*.pt"))) == 2 and path.stat().st_mtime_ns == written
    assert again == first


def test_conditioning_accuracy_tells_faithful_from_ignored_labels(tmp_path):
    def cond_acc(module):
        evaluation = Evaluation(
            num_samples=300, batch_size=150, num_real=50, metrics=("fid",), cache_dir=str(tmp_path)
        )
        return _test(tmp_path, module, [evaluation]).get("test/cond_acc_mnist")

    assert cond_acc(RealDigits()) > 0.9  # real digits of the asked class: the classifier's accuracy
    assert cond_acc(RealDigits(ignore_labels=True)) == pytest.approx(0.1, abs=0.06)  # chance
    assert cond_acc(RealDigits(num_classes=0)) is None  # an unconditional model has none


def test_no_extractor_for_the_data_skips_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="no feature extractor for Digits"):
        metrics = _test(tmp_path, RealDigits(), [Evaluation(num_samples=8)], Digits(batch_size=16))
    assert not any("fid" in k for k in metrics)


def test_other_modalities_are_skipped_quietly(tmp_path, recwarn):
    module = RealDigits()
    module.modality = "text"
    evaluation = Evaluation(num_samples=8, cache_dir=str(tmp_path))
    metrics = _test(tmp_path, module, [evaluation])
    assert not any("fid" in k for k in metrics) and evaluation.last_protocol == {}
    assert not [w for w in recwarn if "Evaluation" in str(w.message)]


def test_two_process_ddp_evaluation_completes_and_ranks_agree(tmp_path):
    run(tmp_path)  # two forked gloo ranks; a rank stuck in a collective raises after a minute
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    drawn = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert ranks[0]["protocol"]["num_generated"] == NUM_SAMPLES
    # The ranks drew disjoint shares of the global sample indices: labels 0..29 mod 10, in order.
    labels = torch.cat([d["labels"] for d in drawn])
    assert labels.tolist() == [i % 10 for i in range(NUM_SAMPLES)]
    assert len(drawn[0]["labels"]) == len(drawn[1]["labels"]) == NUM_SAMPLES // 2

    # One process, the same real features and the union of the generated images.
    extractor = get_extractor("mnist")
    reference = MNIST5k()
    reference.setup()
    real = real_features(
        DataLoader(reference.train_set, batch_size=64),
        extractor,
        dataset="MNIST5k",
        split="train",
        num=NUM_REAL,
        key=reference.identity(),
        cache_dir=tmp_path / "cache",
        progress=False,
    )

    def single(parts):
        metrics = QualityMetrics(extractor, METRICS, conditional=True)
        # each rank keeps rows rank::2 and the gather puts rank 0's first: KID's subsets see this order
        metrics.set_real_features(torch.cat([real[0::2], real[1::2]]))
        metrics.update_fake(torch.cat([p["images"] for p in parts]), torch.cat([p["labels"] for p in parts]))
        return metrics.compute()

    expected = single(drawn)
    assert set(ranks[0]["metrics"]) == {f"test/{key}" for key in expected}
    for key, value in expected.items():
        assert ranks[0]["metrics"][f"test/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # What rank 0 would report from its own half differs: the comparison above sees a missing gather.
    alone = single(drawn[:1])
    assert alone["fid_mnist"] != pytest.approx(expected["fid_mnist"], rel=1e-3)


@pytest.mark.slow  # trains two classifiers for 25 epochs: 35-50 s on two shared cores
def test_classification_accuracy_score_of_a_conditional_model(tmp_path):
    # CAS trains a classifier on the generated images and the labels they were drawn for: on real
    # digits with their own labels it recognises the real test digits (with misaligned labels it
    # would be at chance, 10%), as does the same classifier trained on as many real training images.
    evaluation = Evaluation(
        num_samples=200,
        batch_size=100,
        num_real=50,
        metrics=("fid",),
        cas=True,
        cas_epochs=25,  # 10 epochs of 2 steps leave both classifiers at chance
        cache_dir=str(tmp_path),
    )
    metrics = _test(tmp_path, RealDigits(), [evaluation])
    assert metrics["test/cas"] > 0.6
    assert metrics["test/cas_real"] > 0.6


def _cas_gather_worker(rank: int, port: int, out: str, num_samples: int, batch_size: int) -> None:
    """One of 3 gloo ranks: draw this rank's share of ``num_samples`` as the callback does (ceil-sized
    shares, possibly empty), in batches, and gather them with ``gather_labelled``."""
    world = 3
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=30),
    )
    torch.set_num_threads(1)
    per_rank = math.ceil(num_samples / world)
    first, last = min(rank * per_rank, num_samples), min((rank + 1) * per_rank, num_samples)
    kept = []
    for start in range(first, last, batch_size):
        index = torch.arange(start, min(start + batch_size, last))  # (b,) global sample indices
        images = (index % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 3)  # (b, 1, 2, 3)
        kept.append((images, index % 10))
    x, y = gather_labelled(kept, (1, 2, 3), torch.device("cpu"))
    torch.save({"x": x, "y": y, "n": last - first}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize(
    ("num_samples", "batch_size", "shares"),
    [(1000, 100, [334, 334, 332]), (2, 1, [1, 1, 0]), (7, 2, [3, 3, 1])],
)
def test_cas_gathers_unequal_and_empty_ranks_in_rank_order(tmp_path, num_samples, batch_size, shares):
    # CAS trains on every rank's samples: unequal shares made the plain all_gather abort (gloo) or
    # hang, and a rank without samples raised on torch.cat([]) while the others waited in the gather.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (port, str(tmp_path), num_samples, batch_size)
    mp.start_processes(_cas_gather_worker, args=args, nprocs=3, start_method="fork")  # forked: seconds
    index = torch.arange(num_samples)
    for rank in range(3):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["n"] == shares[rank]
        assert result["x"].shape == (num_samples, 1, 2, 3) and result["x"].dtype == torch.uint8
        assert torch.equal(result["x"][:, 0, 1, 2], (index % 256).to(torch.uint8))  # every row, in order
        assert torch.equal(result["y"], index % 10) and result["y"].dtype == torch.long


def test_cas_gather_is_a_no_op_in_one_process():
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    x, y = gather_labelled(
        [(images[:3], torch.arange(3)), (images[3:], torch.arange(1))], (1, 2, 2), torch.device("cpu")
    )
    assert x.shape == (4, 1, 2, 2) and y.tolist() == [0, 1, 2, 0]
    x, y = gather_labelled([], (1, 2, 2), torch.device("cpu"))
    assert x.shape == (0, 1, 2, 2) and x.dtype == torch.uint8 and y.shape == (0,)


class _PixelDigits(RealDigits):
    """RealDigits whose samples are their digits as 256-level pixel tokens (B, 784) int64, like a
    PixelCNN's."""

    def sample(self, n, *, cond=None, generator=None, ignore_labels=None):
        from lit_genai.data.pixels import image_to_tokens

        return image_to_tokens(super().sample(n, cond=cond, generator=generator), 256)


def test_a_token_model_is_scored_on_decoded_images_against_the_wrapped_images(tmp_path):
    """Pixel (or VQ) token samples go through the data module's decode, and the reference is the
    wrapped image data module's images: the same digits as tokens score exactly as the images."""
    from lit_genai.data.pixels import ImagePixels

    def evaluate(module, data):
        evaluation = Evaluation(num_samples=40, batch_size=20, num_real=80, cache_dir=str(tmp_path / "cache"))
        return _test(tmp_path, module, [evaluation], data)

    as_images = evaluate(RealDigits(), MNIST5k(batch_size=16))
    as_tokens = evaluate(_PixelDigits(), ImagePixels(MNIST5k(batch_size=16), levels=256, batch_size=16))
    assert as_tokens["test/fid_mnist"] == pytest.approx(as_images["test/fid_mnist"], rel=1e-5)
    assert as_tokens["test/cond_acc_mnist"] == as_images["test/cond_acc_mnist"] > 0.9
    assert len(list((tmp_path / "cache").glob("MNIST5k-train-mnist-80-*.pt"))) == 1  # one real set
