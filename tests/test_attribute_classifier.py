"""The attribute classifier of CaptionedShapes: its network and heads, the training module and its
experiment file, the extractor made from its checkpoint, and (slow) the accuracy it reaches on real
pictures of held-out attribute combinations."""

from pathlib import Path

import pytest
import torch

from lit_genai.cli import LitGenAICLI
from lit_genai.data import CaptionedShapes
from lit_genai.errors import ConfigError
from lit_genai.metrics.attributes import AttributeClassifier, AttributeTraining
from lit_genai.metrics.attributes.report import main
from lit_genai.metrics.classifier import Classifier, DomainClassifier
from lit_genai.metrics.classifier.augment import random_shift
from lit_genai.metrics.features import AttributeFeatures, DomainFeatures, get_extractor

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "eval" / "shapes_attributes.yaml"


def _heads(data: CaptionedShapes) -> dict[str, int]:
    return {name: len(data.attribute_values[name]) for name in data.attribute_names}


def _checkpoint(module: AttributeTraining, path: Path) -> Path:
    """What ``lit-genai fit`` saves, as far as the extractor reads it."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_one_head_per_attribute_of_the_data_and_features_of_the_penultimate_layer():
    for max_shapes in (1, 2):
        data = CaptionedShapes(max_shapes=max_shapes)
        net = AttributeClassifier(heads=_heads(data), width=4, feature_dim=8).eval()
        x = torch.rand(3, 3, 32, 32) * 2 - 1
        logits = net(x)
        assert list(logits) == list(data.attribute_names)  # heads in the data's column order
        assert {k: v.shape for k, v in logits.items()} == {k: (3, n) for k, n in _heads(data).items()}
        assert net.features(x).shape == (3, 8)
    # second-shape slots have the value "none" on top of the first shape's values
    assert _heads(data)["shape_2"] == _heads(data)["shape"] + 1


def test_the_network_is_rebuilt_from_its_weights_alone():
    net = AttributeClassifier(heads={"b": 3, "a": 2}, width=4, blocks=2, feature_dim=8).eval()
    again = AttributeClassifier.from_state_dict(net.state_dict()).eval()
    assert (again.width, again.blocks, again.head_sizes) == (4, 2, {"b": 3, "a": 2})
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(again(x), net(x))


def test_heads_must_match_the_datas_attributes():
    data = CaptionedShapes(max_shapes=2)
    heads = _heads(data)
    module = AttributeTraining(
        AttributeClassifier(heads=heads, width=4),
        data.sample_shape,
        data.attribute_names,
        data.attribute_values,
    )
    assert module.attribute_values["colour_2"][-1] == "none"
    with pytest.raises(ConfigError, match="shape_2"):  # a one-shape network on two-shape data
        AttributeTraining(
            AttributeClassifier(width=4), data.sample_shape, data.attribute_names, data.attribute_values
        )
    with pytest.raises(ConfigError, match="in_channels"):
        AttributeTraining(
            AttributeClassifier(in_channels=1, heads=heads), data.sample_shape, data.attribute_names
        )


def test_shift_edges_moves_shapes_by_at_most_max_shift_and_repeats_the_background():
    x = torch.full((64, 3, 8, 8), -0.5)
    x[:, :, 3:5, 3:5] = 1.0  # a 2x2 white square on a grey background
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0), fill="edge")
    assert set(shifted.unique().tolist()) == {-0.5, 1.0}  # no fill colour of its own
    assert ((shifted == 1).sum((1, 2, 3)) == 12).all()  # the square is whole: 2x2 pixels x 3 channels
    assert not torch.equal(shifted, x)
    torch.testing.assert_close(shifted, random_shift(x, 2, torch.Generator().manual_seed(0), fill="edge"))


def test_the_extractor_loads_an_attribute_checkpoint_and_still_a_domain_one(tmp_path):
    data = CaptionedShapes()
    module = AttributeTraining(
        AttributeClassifier(heads=_heads(data), width=4, feature_dim=16),
        data.sample_shape,
        data.attribute_names,
        data.attribute_values,
    )
    extractor = get_extractor(str(_checkpoint(module, tmp_path / "shapes_attr.ckpt")))
    assert isinstance(extractor, AttributeFeatures)
    assert (extractor.name, extractor.num_features, extractor.num_classes) == ("shapes_attr", 16, 0)
    assert extractor.expected_shape == (3, 32, 32) and extractor.attribute_names == data.attribute_names
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    features, logits = extractor.features_and_attribute_logits(images)
    assert features.shape == (5, 16) and torch.equal(extractor(images), features)
    expected = module.net.eval()(images.float() / 127.5 - 1)
    for name in data.attribute_names:
        torch.testing.assert_close(logits[name], expected[name])
    extractor.check_attributes(data.attribute_values)  # the values it was trained on
    reordered = {**data.attribute_values, "colour": data.attribute_values["colour"][::-1]}
    with pytest.raises(ConfigError, match="'colour'"):
        extractor.check_attributes(reordered)
    with pytest.raises(ConfigError, match="trained on \\[3, 32, 32\\]"):
        extractor(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    # A domain classifier's checkpoint is still a DomainFeatures.
    digits = Classifier(DomainClassifier(width=8, feature_dim=16), sample_shape=(1, 28, 28), num_classes=10)
    assert isinstance(get_extractor(str(_checkpoint(digits, tmp_path / "digits.ckpt"))), DomainFeatures)


def test_the_experiment_instantiates_with_heads_and_attributes_from_the_data(tmp_path):
    cli = LitGenAICLI(args=["--config", str(CONFIG), "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert isinstance(cli.model, AttributeTraining) and isinstance(cli.model.net, AttributeClassifier)
    assert cli.model.attribute_names == cli.datamodule.attribute_names
    assert cli.model.attribute_values == cli.datamodule.attribute_values
    assert cli.model.net.head_sizes == _heads(cli.datamodule)


def test_trains_and_tests_through_the_cli_with_per_attribute_accuracies(tmp_path):
    tiny = [
        "--config", str(CONFIG),
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.train_size", "64",
        "--data.init_args.batch_size", "16",
        "--model.net.init_args.width", "4",
    ]  # fmt: skip
    fit = LitGenAICLI(args=["fit", *tiny])
    keys = {"train/loss", "val/loss", "val/acc", *(f"val/acc_{a}" for a in fit.datamodule.attribute_names)}
    assert keys <= set(fit.trainer.callback_metrics)
    test = LitGenAICLI(args=["test", *tiny, "--ckpt_path", "last"])
    assert 0.0 <= test.trainer.callback_metrics["test/acc_background"] <= 1.0
    extractor = get_extractor(str(tmp_path / "checkpoints" / "last.ckpt"))
    assert (
        isinstance(extractor, AttributeFeatures)
        and extractor.attribute_values == fit.datamodule.attribute_values
    )


def test_training_augmentation_stays_in_range_and_can_be_turned_off():
    net = AttributeClassifier(width=4)
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    off = AttributeTraining(net, max_shift=0, noise_std=0.0, colour_shift=0.0)
    assert torch.equal(off._augment(x), x)
    augmented = AttributeTraining(net)._augment(x)  # shift, colour shift and noise by default
    assert augmented.shape == x.shape and augmented.min() >= -1 and augmented.max() <= 1
    assert not torch.equal(augmented, x)


def test_the_accuracy_command_reports_test_and_held_out_pictures(tmp_path, capsys):
    data = CaptionedShapes()
    module = AttributeTraining(
        AttributeClassifier(heads=_heads(data), width=4),
        data.sample_shape,
        data.attribute_names,
        data.attribute_values,
    )
    path = _checkpoint(module, tmp_path / "attr.ckpt")
    main(["accuracy", str(path), "--noise_std", "0.1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("(")[0].strip() for line in lines] == ["test", "held_out"]
    assert all("1000 pictures" in line and "background" in line for line in lines)
    with pytest.raises(SystemExit) as exit:
        main(["accuracy", str(tmp_path / "missing.ckpt")])
    assert exit.value.code == 1
    assert capsys.readouterr().err.count("\n") == 1  # one line saying which file is missing
