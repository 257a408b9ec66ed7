"""Sample-quality metrics: precision/recall and FID against analytic values and scipy, conditioning
accuracy, the protocol they report, the real-feature cache and its key, DDP gathering, and sanity
orderings with the shipped MNIST classifier."""

import json
import math
import socket

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from lit_genai.data import MNIST5k
from lit_genai.data.images import ImageFolder
from lit_genai.errors import ConfigError
from lit_genai.media import to_uint8
from lit_genai.metrics.cache import real_features
from lit_genai.metrics.features import get_extractor
from lit_genai.metrics.precision_recall import knn_radii, precision_recall
from lit_genai.metrics.quality import QualityMetrics


class StubExtractor(nn.Module):
    """The FeatureExtractor interface on a fixed random projection of grey images of ``pixels``
    pixels (6x6 by default); counts its calls."""

    name = "stub"

    def __init__(self, num_features: int = 8, num_classes: int = 4, seed: int = 0, pixels: int = 36) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.num_features, self.num_classes = num_features, num_classes
        self.proj = nn.Linear(pixels, num_features)
        self.head = nn.Linear(num_features, max(num_classes, 1))
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.proj(images.float().flatten(1) / 255)  # (B, D)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self(images))  # (B, K)


def _gaussian(n: int, dim: int, mean: float = 0.0, std: float = 1.0, seed: int = 0) -> torch.Tensor:
    return mean + std * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))  # (n, dim)


def _feature_metrics(real: torch.Tensor, fake: torch.Tensor, metrics=("fid", "kid", "pr"), **kwargs):
    metrics = QualityMetrics(StubExtractor(real.shape[1]), metrics=metrics, **kwargs)
    metrics.set_real_features(real)
    metrics.update_fake_features(fake)
    return metrics.compute()


# ---------------------------------------------------------------------- quantisation


def test_to_uint8_gives_back_the_bytes_real_images_were_made_from():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = pixels.float() / 127.5 - 1  # what the data modules yield
    assert torch.equal(to_uint8(x), pixels)
    assert to_uint8(torch.tensor([[[[-1.7, 1.3, 0.001]]]])).tolist() == [[[[0, 255, 128]]]]


# ---------------------------------------------------------------------- precision / recall


def test_knn_radius_is_the_kth_neighbour_excluding_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(x, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, k=2).tolist() == [3.0, 2.0, 3.0, 6.0]
    with pytest.raises(ConfigError, match="k=4"):
        knn_radii(x, k=4)


def test_precision_recall_of_gaussian_clouds():
    real = _gaussian(1500, 8, seed=0)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)  # the same set covers itself exactly
    same = precision_recall(real, _gaussian(1500, 8, seed=1))
    assert min(same) > 0.8  # same distribution, other samples: both high
    assert precision_recall(real, _gaussian(1500, 8, mean=10.0, seed=1)) == (0.0, 0.0)
    precision, recall = precision_recall(real, _gaussian(1500, 8, std=0.3, seed=1))  # mode collapse
    assert precision > 0.95 and recall < 0.1


def test_precision_recall_does_not_depend_on_the_chunk_size():
    real, fake = _gaussian(300, 4, seed=0), _gaussian(200, 4, std=1.5, seed=1)
    assert precision_recall(real, fake, chunk=37) == precision_recall(real, fake, chunk=4096)


# ---------------------------------------------------------------------- FID / KID on features


def test_fid_of_identical_features_is_zero():
    real = _gaussian(1000, 8)
    scores = _feature_metrics(real, real.clone(), metrics=("fid", "pr"))
    assert abs(scores["fid_stub"]) < 1e-6
    assert scores["precision_stub"] == scores["recall_stub"] == 1.0


def test_kid_is_unbiased_for_samples_of_one_distribution():
    # (an identical set is not an independent sample: KID's unbiased estimator then dips below 0)
    real = _gaussian(1000, 8)
    same = _feature_metrics(real, _gaussian(1000, 8, seed=1), kid_subset_size=200)
    assert abs(same["kid_stub"]) < same["kid_stub_std"]
    shifted = _feature_metrics(real, _gaussian(1000, 8, mean=0.3, seed=1), kid_subset_size=200)
    assert shifted["kid_stub"] > 3 * shifted["kid_stub_std"]


@pytest.mark.parametrize("mean, std", [(1.0, 1.0), (0.0, 0.5), (0.5, 2.0)])
def test_fid_of_gaussians_matches_the_closed_form(mean, std):
    # N(0, I) vs N(m·1, s²I) in D dims: FID = ||mu1 - mu2||² + tr(S1 + S2 - 2 (S1 S2)^½) = D m² + D (1 - s)²
    dim = 8
    expected = dim * mean**2 + dim * (1 - std) ** 2
    real, fake = _gaussian(4000, dim, seed=0), _gaussian(4000, dim, mean, std, seed=1)
    assert _feature_metrics(real, fake, metrics=("fid",))["fid_stub"] == pytest.approx(expected, rel=0.06)


def _frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Heusel et al. 2017, eq. 6 with scipy: ||mu1 - mu2||² + tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_scipy_on_gaussians_whose_covariances_do_not_commute():
    # Random non-diagonal covariances: S1 S2 is not symmetric, so a shortcut that treats the two
    # as simultaneously diagonal (or takes sqrt(S1) sqrt(S2)) gives another number.
    rng = np.random.default_rng(0)
    dim, n = 16, 2000
    a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim)) / 2
    real = rng.normal(size=(n, dim)) @ a.T
    fake = rng.normal(size=(n, dim)) @ b.T + rng.normal(size=dim)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    assert np.abs(s1 @ s2 - s2 @ s1).max() > 0.1 * np.abs(s1 @ s2).max()  # they do not commute
    sqrt_product = np.trace(scipy.linalg.sqrtm(s1).real @ scipy.linalg.sqrtm(s2).real)
    assert abs(sqrt_product - np.trace(scipy.linalg.sqrtm(s1 @ s2).real)) > 1.0  # the shortcut is off
    expected = _frechet_distance(real, fake)
    fid = _feature_metrics(torch.from_numpy(real).float(), torch.from_numpy(fake).float(), metrics=("fid",))
    assert fid["fid_stub"] == pytest.approx(expected, rel=1e-3)


# ---------------------------------------------------------------------- conditioning accuracy


def test_conditioning_accuracy_is_the_share_of_samples_classified_as_asked():
    metrics = QualityMetrics(StubExtractor(num_classes=4), metrics=("fid",), conditional=True)
    metrics.set_real_features(_gaussian(20, 8))
    logits = torch.eye(4)[torch.tensor([0, 1, 2, 3, 0])] * 5  # (5, 4): classified as 0, 1, 2, 3, 0
    metrics.update_fake_features(_gaussian(5, 8, seed=1), logits, labels=torch.tensor([0, 1, 2, 0, 1]))
    metrics.update_fake_features(_gaussian(0, 8), logits[:0], labels=torch.zeros(0, dtype=torch.long))
    assert metrics.compute()["cond_acc_stub"] == pytest.approx(3 / 5)
    with pytest.raises(ConfigError, match="labels"):
        metrics.update_fake(torch.zeros(2, 1, 6, 6, dtype=torch.uint8))  # labels forgotten
    with pytest.raises(ConfigError, match="no class logits"):
        QualityMetrics(StubExtractor(num_classes=0), metrics=("fid",), conditional=True)


def test_kid_subset_size_is_clamped_and_reported_in_the_protocol():
    metrics = QualityMetrics(StubExtractor(), metrics=("fid", "kid"), kid_subset_size=1000)
    metrics.set_real_features(_gaussian(500, 8, seed=2))
    metrics.set_real_features(_gaussian(300, 8))  # replaces the first set
    metrics.update_fake_features(_gaussian(120, 8, seed=1))
    scores = metrics.compute()
    assert set(scores) == {"fid_stub", "kid_stub", "kid_stub_std"}
    protocol = metrics.protocol("Gauss/train", sampler={"steps": 50}, num_real_requested=500)
    assert (protocol.num_real, protocol.num_generated, protocol.kid_subset_size) == (300, 120, 120)
    assert any("clamped from 1000 to 120" in note for note in protocol.notes)
    assert any("500 real images requested, 300" in note for note in protocol.notes)
    assert json.loads(json.dumps(protocol.as_dict()))["sampler"] == {"steps": 50}


def test_evaluations_repeat_after_reset_fake_and_tolerate_empty_batches():
    extractor = StubExtractor()
    metrics = QualityMetrics(extractor, kid_subset_size=50)
    real = torch.randint(0, 256, (80, 1, 6, 6), dtype=torch.uint8)
    fake = torch.randint(0, 200, (60, 1, 6, 6), dtype=torch.uint8)
    metrics.update_real(real)
    runs = []
    for _ in range(2):
        metrics.update_fake(fake[:0])  # a rank with nothing to add
        for batch in fake.split(25):
            metrics.update_fake(batch)
        runs.append(metrics.compute())
        metrics.reset_fake()  # real statistics stay
    assert runs[0] == runs[1]  # seeded KID subsets and IS splits: same numbers each time
    assert set(runs[0]) == {
        "fid_stub",
        "kid_stub",
        "kid_stub_std",
        "is_stub",
        "is_stub_std",
        "precision_stub",
        "recall_stub",
    }
    assert metrics.protocol("random").num_generated == 60


def test_user_errors_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="no class logits"):
        QualityMetrics(StubExtractor(num_classes=0))
    with pytest.raises(ConfigError, match="choose from"):
        QualityMetrics(StubExtractor(), metrics=("fid", "lpips"))
    metrics = QualityMetrics(StubExtractor(), metrics=("fid",))
    with pytest.raises(ConfigError, match="uint8"):
        metrics.update_fake(torch.rand(4, 1, 6, 6) * 2 - 1)  # [-1, 1] samples not quantised
    with pytest.raises(ConfigError, match="another extractor"):
        metrics.set_real_features(torch.zeros(10, 2048))
    metrics.update_fake(torch.zeros(5, 1, 6, 6, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="FID needs at least 2 images on each side, got 0 real"):
        metrics.compute()


# ---------------------------------------------------------------------- real-feature cache


def test_real_features_are_cached_and_reused(tmp_path):
    extractor = StubExtractor()
    x = torch.rand(70, 1, 6, 6) * 2 - 1
    loader = DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(70)), batch_size=16)
    first = real_features(loader, extractor, dataset="Toy", split="train", num=50, cache_dir=tmp_path)
    assert first.shape == (50, 8) and (tmp_path / "Toy-train-stub-50.pt").is_file()
    assert torch.equal(first, extractor(to_uint8(x[:50])))  # quantised like generated images
    extractor.calls = 0
    again = real_features(loader, extractor, dataset="Toy", split="train", num=50, cache_dir=tmp_path)
    assert extractor.calls == 0 and torch.equal(again, first)
    with pytest.warns(UserWarning, match="fewer than num=100: using all 70"):
        all_of_them = real_features(x, extractor, dataset="Toy", split="train", num=100, cache_dir=tmp_path)
    assert all_of_them.shape == (70, 8) and (tmp_path / "Toy-train-stub-70.pt").is_file()
    other = StubExtractor(seed=1)  # same name, other weights: the cache must not be reused
    with pytest.warns(UserWarning, match="other extractor weights"):
        recomputed = real_features(x, other, dataset="Toy", split="train", num=50, cache_dir=tmp_path)
    assert other.calls > 0 and not torch.equal(recomputed, first)


def test_cache_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_GENAI_CACHE", str(tmp_path))
    real_features(torch.zeros(4, 1, 6, 6), StubExtractor(), dataset="Z", split="test", num=4, progress=False)
    assert (tmp_path / "Z-test-stub-4.pt").is_file()


def _image_folder(root, seed: int, n: int = 8) -> str:
    """``n`` random 6x6 grey PNGs in ``root/digits/``; returns ``root``."""
    (root / "digits").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8), mode="L").save(
            root / "digits" / f"{i}.png"
        )
    return str(root)


def _cached_features(datamodule, extractor, cache_dir, num: int) -> torch.Tensor:
    datamodule.setup()
    loader = DataLoader(datamodule.train_set, batch_size=4)
    return real_features(
        loader,
        extractor,
        dataset=type(datamodule).__name__,
        split="train",
        num=num,
        key=datamodule.identity(),
        cache_dir=cache_dir,
        progress=False,
    )


def test_real_feature_cache_is_keyed_on_the_data_configuration(tmp_path):
    cache, extractor = tmp_path / "cache", StubExtractor()
    a, b = _image_folder(tmp_path / "a", seed=0), _image_folder(tmp_path / "b", seed=1)
    folder = dict(image_size=6, channels=1, val_size=2)
    # Two folders with as many images (same name, split and N): two files, each its own features.
    from_a = _cached_features(ImageFolder(a, **folder), extractor, cache, num=6)
    from_b = _cached_features(ImageFolder(b, **folder), extractor, cache, num=6)
    assert not torch.equal(from_a, from_b)
    assert len(list(cache.glob("ImageFolder-train-stub-6-*.pt"))) == 2
    # The same configuration, batched and loaded differently, reads its file without extracting.
    extractor.calls = 0
    again = _cached_features(ImageFolder(a, **folder, batch_size=3, num_workers=0), extractor, cache, num=6)
    assert extractor.calls == 0 and torch.equal(again, from_a)
    # An image replaced under the same name is other data.
    Image.fromarray(np.zeros((6, 6), dtype=np.uint8), mode="L").save(tmp_path / "a" / "digits" / "0.png")
    _cached_features(ImageFolder(a, **folder), extractor, cache, num=6)
    assert extractor.calls > 0

    # MNIST5k with another seed holds other training images: other features, another file.
    mnist = StubExtractor(pixels=28 * 28)
    seed0 = _cached_features(MNIST5k(seed=0), mnist, cache, num=40)
    seed1 = _cached_features(MNIST5k(seed=1), mnist, cache, num=40)
    assert not torch.equal(seed0, seed1)
    assert len(list(cache.glob("MNIST5k-train-stub-40-*.pt"))) == 2
    mnist.calls = 0
    same = _cached_features(
        MNIST5k(seed=0, batch_size=7, predict_samples=3, random_flip=True), mnist, cache, 40
    )
    assert mnist.calls == 0 and torch.equal(same, seed0)


def test_data_identity_holds_what_decides_the_images(tmp_path):
    base = MNIST5k().identity()
    json.dumps(base)  # JSON-able, as the cache key needs
    for change in ({"seed": 1}, {"val_size": 400}, {"test_size": 400}):
        assert MNIST5k(**change).identity() != base, change
    for change in ({"batch_size": 3}, {"num_workers": 2}, {"predict_samples": 5}, {"random_flip": True}):
        assert MNIST5k(**change).identity() == base, change
    root = _image_folder(tmp_path / "images", seed=0)
    folder = ImageFolder(root, image_size=6).identity()
    assert folder["root"] == str((tmp_path / "images").resolve()) and folder["num_files"] == 8
    for change in ({"image_size": 4}, {"channels": 1}, {"labels": False}, {"val_split": "test"}, {"seed": 2}):
        assert ImageFolder(root, **{"image_size": 6, **change}).identity() != folder, change


# ---------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    real, fake, logits, labels = _ddp_data()
    metrics = QualityMetrics(StubExtractor(), kid_subset_size=40, conditional=True)
    metrics.set_real_features(real)  # the full set on every rank; each keeps half
    if rank == 0:  # uneven shares and numbers of updates, one of them empty
        for lo, hi in ((0, 15), (15, 30), (30, 40)):
            metrics.update_fake_features(fake[lo:hi], logits[lo:hi], labels[lo:hi])
    else:
        metrics.update_fake(torch.zeros(0, 1, 6, 6, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
        metrics.update_fake_features(fake[40:], logits[40:], labels[40:])
    scores = metrics.compute()
    torch.save({"scores": scores, "protocol": metrics.protocol("ddp").as_dict()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _ddp_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(3))
    return _gaussian(101, 8, seed=0), _gaussian(50, 8, 0.3, seed=1), _gaussian(50, 4, seed=2), labels


def test_ddp_gathers_uneven_and_empty_ranks_like_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # forked workers inherit this process's imports: seconds, where spawned ones import torch again
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, start_method="fork")
    real, fake, logits, labels = _ddp_data()
    single = QualityMetrics(StubExtractor(), kid_subset_size=40, conditional=True)
    single.set_real_features(real)
    single.update_fake_features(fake, logits, labels)
    expected = single.compute()
    assert 0.1 < expected["cond_acc_stub"] < 0.5  # neither empty nor all-agreeing: a sum gone wrong shows
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert (result["protocol"]["num_real"], result["protocol"]["num_generated"]) == (101, 50)
        for key, value in expected.items():
            # KID draws its subsets from the gathered real rows, which come back in another order
            tolerance = 3 * expected["kid_stub_std"] if key.startswith("kid") else 1e-5
            assert result["scores"][key] == pytest.approx(value, abs=tolerance), key


# ---------------------------------------------------------------------- MNIST sanity orderings


@pytest.fixture(scope="module")
def mnist_sets() -> dict[str, torch.Tensor]:
    """uint8 image sets (N, 1, 28, 28): reference (1000 train), held-out real, blurred held-out,
    one class (digit 3, not in the reference), uniform noise."""
    dm = MNIST5k(val_size=500, test_size=500)
    dm.setup()
    (x_train, y_train), (x_val, _), (x_test, _) = (s.tensors for s in (dm.train_set, dm.val_set, dm.test_set))
    held_out = torch.cat([x_val, x_test])[:600]  # (600, 1, 28, 28) in [-1, 1]
    rest, rest_labels = x_train[1000:], y_train[1000:]
    return {
        "reference": to_uint8(x_train[:1000]),
        "held_out": to_uint8(held_out),
        "blurred": to_uint8(TF.gaussian_blur(held_out, kernel_size=5, sigma=1.0)),
        "one_class": to_uint8(rest[rest_labels == 3][:300]),
        "noise": torch.randint(0, 256, (600, 1, 28, 28), generator=torch.Generator().manual_seed(0)).byte(),
    }


@pytest.fixture(scope="module")
def mnist_scores(mnist_sets) -> dict[str, dict[str, float]]:
    extractor = get_extractor("mnist")
    metrics = QualityMetrics(extractor, kid_subset_size=300)
    metrics.update_real(mnist_sets["reference"])
    scores = {}
    for name in ("held_out", "blurred", "one_class", "noise"):
        for batch in mnist_sets[name].split(250):
            metrics.update_fake(batch)
        scores[name] = metrics.compute()
        metrics.reset_fake()  # the reference statistics stay
    print({name: {k: round(v, 4) for k, v in s.items()} for name, s in scores.items()})  # README numbers
    return scores


def test_mnist_fid_orders_real_blurred_one_class_noise(mnist_scores):
    fid = {name: s["fid_mnist"] for name, s in mnist_scores.items()}
    assert fid["held_out"] < fid["blurred"] < fid["one_class"] < fid["noise"]
    assert fid["blurred"] > 10 * fid["held_out"]  # measured: 1.7 < 63 < 286 < 2072
    kid = {name: s["kid_mnist"] for name, s in mnist_scores.items()}
    assert kid["held_out"] < kid["blurred"] < kid["one_class"]


def test_mnist_inception_score_counts_classes(mnist_scores):
    assert mnist_scores["held_out"]["is_mnist"] > 7  # ten classes, confidently recognised
    assert mnist_scores["one_class"]["is_mnist"] < 1.5  # one class
    assert not math.isnan(mnist_scores["held_out"]["is_mnist_std"])


def test_mnist_precision_recall_of_real_data_is_high(mnist_scores):
    held_out = mnist_scores["held_out"]
    assert held_out["precision_mnist"] > 0.7 and held_out["recall_mnist"] > 0.7
    one_class = mnist_scores["one_class"]
    assert one_class["recall_mnist"] < 0.3  # one digit of ten cannot cover the real manifold
    assert mnist_scores["noise"]["precision_mnist"] < 0.05
