"""Feature extractors and the domain classifier: uint8 contract, Inception loading without a download,
the shipped MNIST weights, the CAS trainer on real digits, and the classifier's experiment file."""

import runpy
import sys
from pathlib import Path

import pytest
import torch

from lit_genai.cli import LitGenAICLI
from lit_genai.data import MNIST5k
from lit_genai.errors import ConfigError, DataNotFoundError
from lit_genai.metrics.classifier.augment import random_shift
from lit_genai.metrics.classifier.cas import accuracy, train_classifier
from lit_genai.metrics.classifier.export import export_weights
from lit_genai.metrics.classifier.module import Classifier
from lit_genai.metrics.classifier.network import DomainClassifier
from lit_genai.metrics.features import (
    INCEPTION_FILE,
    DomainFeatures,
    InceptionFeatures,
    domain_extractor,
    get_extractor,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "eval" / "mnist_classifier.yaml"
SHIPPED_TEST_ACC = 0.988  # measured on MNIST5k's 500 test digits (see the YAML's header)


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def mnist() -> MNIST5k:
    dm = MNIST5k()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def hub_with_random_inception(tmp_path_factory) -> Path:
    """A torch hub dir holding an Inception weights file of the right architecture (random weights)."""
    tf_inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    hub = tmp_path_factory.mktemp("hub")
    (hub / "checkpoints").mkdir()
    empty = hub / "empty.pth"
    torch.save({}, empty)
    with pytest.MonkeyPatch.context() as mp:  # build the bare architecture: skip torch-fidelity's load
        mp.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], str(empty))
    torch.save(net.state_dict(), hub / "checkpoints" / INCEPTION_FILE)
    return hub


@pytest.fixture()
def no_download(monkeypatch):
    tf_inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_inception_loads_from_the_hub_cache_and_repeats_grey_to_rgb(
    hub_with_random_inception, monkeypatch, no_download
):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_with_random_inception))
    extractor = get_extractor("inception")
    assert (extractor.name, extractor.num_features, extractor.num_classes) == ("inception", 2048, 1008)
    grey = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    features, logits = extractor.features_and_logits(grey)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    rgb = extractor(grey.expand(-1, 3, -1, -1).contiguous())
    torch.testing.assert_close(features, rgb)  # grey is the same image repeated on R, G and B


def test_inception_takes_an_explicit_weights_path(hub_with_random_inception, no_download):
    extractor = InceptionFeatures(
        weights_path=str(hub_with_random_inception / "checkpoints" / INCEPTION_FILE)
    )
    assert extractor.logits(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape == (1, 1008)


def test_missing_inception_weights_say_which_file_and_where(tmp_path, monkeypatch, no_download):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(DataNotFoundError) as error:
        get_extractor("inception")
    message = str(error.value)
    assert "\n" not in message
    assert INCEPTION_FILE in message and "https://github.com/toshas/torch-fidelity/releases" in message
    assert str(tmp_path / "checkpoints") in message and "weights_path" in message
    with pytest.raises(DataNotFoundError, match="nowhere.pth"):
        get_extractor("inception", weights_path=str(tmp_path / "nowhere.pth"))


def test_corrupt_inception_weights_are_one_clear_error(tmp_path):
    pytest.importorskip("torch_fidelity")
    path = tmp_path / INCEPTION_FILE
    path.write_bytes(b"truncated download")
    with pytest.raises(ConfigError, match=INCEPTION_FILE):
        InceptionFeatures(str(path))


def test_shipped_mnist_classifier_recognises_held_out_digits(mnist):
    extractor = domain_extractor("mnist")
    assert (extractor.name, extractor.num_features, extractor.num_classes) == ("mnist", 128, 10)
    x, y = mnist.test_set.tensors  # 500 digits never seen in training, (N, 1, 28, 28) in [-1, 1]
    images = _uint8(x)
    predicted = extractor.logits(images).argmax(-1)
    acc = (predicted == y).float().mean().item()
    assert acc >= SHIPPED_TEST_ACC - 0.01, acc
    assert extractor(images[:5]).shape == (5, 128)
    assert sum(p.numel() * 4 for p in extractor.parameters()) < 1_000_000  # under 1 MB of float32


def test_extractors_take_uint8_only_and_refuse_other_resolutions():
    extractor = get_extractor("mnist")
    with pytest.raises(TypeError, match="uint8"):
        extractor(torch.zeros(2, 1, 28, 28))  # float images in [-1, 1]: quantise first
    with pytest.raises(ConfigError, match=r"\[1, 28, 28\]"):
        extractor(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_unknown_extractor_lists_the_choices():
    with pytest.raises(ConfigError, match="inception.*mnist"):
        get_extractor("lenet")
    with pytest.raises(ConfigError, match="no such file"):
        get_extractor("runs/missing.ckpt")


def test_extractor_from_a_state_dict_path_is_named_after_the_file(tmp_path):
    net = DomainClassifier(in_channels=1, num_classes=4, width=8, feature_dim=16)
    path = tmp_path / "digits8x8.pt"
    torch.save(net.state_dict(), path)
    extractor = get_extractor(str(path))
    assert isinstance(extractor, DomainFeatures)
    assert (extractor.name, extractor.num_features, extractor.num_classes) == ("digits8x8", 16, 4)
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(extractor.logits(images), net.eval()(images.float() / 127.5 - 1))


def test_classifier_checkpoint_exports_to_the_shipped_format(tmp_path):
    net = DomainClassifier(width=8, feature_dim=16)
    module = Classifier(net, sample_shape=(1, 28, 28), num_classes=10)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    out = export_weights(tmp_path / "last.ckpt", tmp_path / "weights" / "clf.pt")
    state = torch.load(out, weights_only=True)
    assert set(state) == set(net.state_dict())
    from_ckpt = get_extractor(str(tmp_path / "last.ckpt"))
    assert from_ckpt.expected_shape == (1, 28, 28)  # read from the checkpoint's hyperparameters


def test_the_export_command_and_the_class_paths_of_the_old_module_still_work(tmp_path, monkeypatch, capsys):
    # YAML class paths, saved configs and the README's command name lit_genai.metrics.classifier
    import lit_genai.metrics.classifier as package

    assert (package.Classifier, package.DomainClassifier) == (Classifier, DomainClassifier)
    net = DomainClassifier(width=8, feature_dim=16)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "last.ckpt")
    argv = [
        "python -m lit_genai.metrics.classifier",
        "export",
        str(tmp_path / "last.ckpt"),
        str(tmp_path / "w.pt"),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("lit_genai.metrics.classifier", run_name="__main__")
    assert "wrote" in capsys.readouterr().out
    assert set(torch.load(tmp_path / "w.pt", weights_only=True)) == set(net.state_dict())


def test_random_shift_translates_by_at_most_max_shift_and_fills_background():
    x = torch.ones(64, 1, 6, 6)
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and set(shifted.unique().tolist()) == {-1.0, 1.0}
    kept = (shifted == 1).sum((1, 2, 3))  # an image shifted by (dy, dx) keeps (6-|dy|)(6-|dx|) pixels
    assert kept.min() >= 16 and (kept < 36).any() and (kept == 36).any()
    torch.testing.assert_close(shifted, random_shift(x, 2, torch.Generator().manual_seed(0)))
    assert torch.equal(random_shift(x, 0), x)


def test_train_classifier_learns_real_digits_quickly(mnist):
    x, y = mnist.train_set.tensors
    # CAS recipe on 2000 real digits given as uint8 (as quantised samples are): ~6 s on one thread
    net = train_classifier(_uint8(x[:2000]), y[:2000], 10, epochs=4, batch_size=32, width=8, seed=0)
    x_test, y_test = mnist.test_set.tensors
    acc = accuracy(net, x_test, y_test)
    assert acc > 0.87, acc  # measured 0.908
    rng = torch.get_rng_state()
    again = train_classifier(x[:64], y[:64], 10, epochs=1, width=8, seed=3)
    same = train_classifier(x[:64], y[:64], 10, epochs=1, width=8, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
    torch.testing.assert_close(again(x[:4]), same(x[:4]))  # seeded


def test_classifier_experiment_instantiates(tmp_path):
    cli = LitGenAICLI(args=["--config", str(CONFIG), "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert isinstance(cli.model, Classifier) and isinstance(cli.model.net, DomainClassifier)
    assert cli.model.sample_shape == cli.datamodule.sample_shape == (1, 28, 28)
    assert cli.model.num_classes == 10


def test_classifier_refuses_a_network_that_does_not_fit_the_data():
    with pytest.raises(ConfigError, match="in_channels: 3"):
        Classifier(DomainClassifier(in_channels=1), sample_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ConfigError, match="num_classes: 100"):
        Classifier(DomainClassifier(num_classes=10), sample_shape=(1, 28, 28), num_classes=100)


def test_classifier_trains_and_tests_through_the_cli(tmp_path):
    tiny = [
        "--config", str(CONFIG),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--model.net.init_args.width", "8",
    ]  # fmt: skip
    fit = LitGenAICLI(args=["fit", *tiny])
    assert {"train/loss", "val/loss", "val/acc"} <= set(fit.trainer.callback_metrics)
    test = LitGenAICLI(args=["test", *tiny, "--ckpt_path", "last"])
    assert 0.0 <= test.trainer.callback_metrics["test/acc"] <= 1.0
    exported = export_weights(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "net.pt")
    state = torch.load(exported, weights_only=True)
    assert state["body.0.0.weight"].shape[0] == 8  # the trained net, in the shipped format
