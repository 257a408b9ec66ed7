"""Image-to-image data (lit_genai.data.translation, translation_folders): batch formats, the offline
tasks' construction, folders of pairs and of two domains, and the one-line error of a missing set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lit_genai.data.translation import (
    PALETTE,
    ColouredDigits,
    DigitsToMNIST,
    EdgesToDigits,
    on_background,
    sobel_edges,
    uci_digits_28,
)
from lit_genai.data.translation_folders import Facades, Horse2Zebra, PairedFolder, UnpairedFolders
from lit_genai.errors import DataNotFoundError


def test_sobel_edges_outline_a_square():
    x = -torch.ones(1, 1, 8, 8)
    x[..., 2:6, 2:6] = 1  # a white square on black
    edges = sobel_edges(x)
    assert set(edges.unique().tolist()) <= {-1.0, 1.0}
    assert edges[0, 0, 4, 4] == -1 and edges[0, 0, 0, 0] == -1  # flat inside and outside
    assert edges[0, 0, 2, 4] == 1 and edges[0, 0, 4, 1] == 1  # on the square's border


def test_paired_digits_batches_and_the_colour_rule():
    data = EdgesToDigits(batch_size=4)
    data.setup()
    source, target, label = next(iter(data.train_dataloader()))
    assert source.shape == target.shape == (4, 1, 28, 28) and label.dtype == torch.long
    torch.testing.assert_close(source, sobel_edges(target, data.threshold))
    assert data.conditions == ("image", "label") and data.source_shape == data.sample_shape == (1, 28, 28)
    coloured = ColouredDigits(batch_size=4)
    coloured.setup()
    grey, rgb, label = next(iter(coloured.train_dataloader()))
    assert rgb.shape == (4, 3, 28, 28) and coloured.sample_shape == (3, 28, 28)
    torch.testing.assert_close(rgb, on_background(grey, torch.tensor(PALETTE)[label]))
    corner = (rgb[:, :, 0, 0] + 1) / 2  # background pixel: the label's palette colour
    torch.testing.assert_close(corner, torch.tensor(PALETTE)[label])


def test_uci_digits_look_like_mnist_and_the_unpaired_batches():
    x, y = uci_digits_28()
    assert x.shape == (1797, 1, 28, 28) and y.shape == (1797,)
    assert (x[..., :4, :] == -1).all() and (x[..., :, -4:] == -1).all()  # MNIST's 4-pixel border
    data = DigitsToMNIST(batch_size=4)
    data.setup()
    a, b, label_a, label_b = next(iter(data.train_dataloader()))
    assert a.shape == b.shape == (4, 1, 28, 28) and label_a.shape == label_b.shape == (4,)
    assert len(data.train_set) == 5000 - 500  # max(N_A, N_B) training items
    assert len(data.val_set) == 200 and len(data.test_set) == 300  # min of the held-out sizes


def _picture(path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def test_a_folder_of_side_by_side_pairs(tmp_path):
    (tmp_path / "train").mkdir()
    for i in range(5):
        ab = np.zeros((8, 16, 3), dtype=np.uint8)
        ab[:, 8:] = 255  # A black on the left, B white on the right
        _picture(tmp_path / "train" / f"{i}.png", ab)
    data = PairedFolder(str(tmp_path), image_size=8, val_size=2, batch_size=3)
    data.setup()
    source, target, label = next(iter(data.train_dataloader()))
    assert source.shape == (3, 3, 8, 8) and (source == -1).all() and (target == 1).all()
    assert len(data.train_set) == 3 and len(data.val_set) == 2 and len(data.test_set) == 2
    flipped = PairedFolder(str(tmp_path), direction="BtoA", image_size=8, val_size=2)
    flipped.setup()
    assert (flipped.train_set[0][0] == 1).all()


def test_two_folders_of_unpaired_domains(tmp_path):
    for folder, value, n in (("trainA", 0, 4), ("trainB", 255, 6), ("testA", 0, 2), ("testB", 255, 2)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            _picture(tmp_path / folder / f"{i}.jpg", np.full((10, 10), value, dtype=np.uint8))
    data = UnpairedFolders(str(tmp_path), image_size=8, channels=1, val_size=1, batch_size=2)
    data.setup()
    a, b, _, _ = next(iter(data.train_dataloader()))
    assert a.shape == b.shape == (2, 1, 8, 8) and (a == -1).all() and (b == 1).all()
    assert len(data.train_set) == 5 and len(data.val_set) == 1 and len(data.test_set) == 2


def test_a_missing_standard_set_says_where_to_put_it(tmp_path):
    for data, folders in ((Facades, "train/"), (Horse2Zebra, "trainA/")):
        module = data(root=str(tmp_path / "absent"), download=False)
        with pytest.raises(DataNotFoundError, match=f"put the images under .*{folders}") as error:
            module.setup()
        assert "\n" not in str(error.value) and "efrosgans" in str(error.value)
