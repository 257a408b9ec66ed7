"""The checks every data module runs on the counts it takes (batch size, workers, split sizes, predict
samples, ...), so that a value no loader can use is one ``ConfigError`` line when the module is built,
naming its key (docs/architecture.md, "Errors"), instead of what it did before: a ``DataLoader``
traceback (``batch_size 0``), a ``torch.arange`` traceback (``predict_samples -1``) or a ``predict``
that ends without a word and without a file (``predict_samples 0``).

One table, ``COUNTS``, gives the least value of each name and what it counts, so every data module
(images, text, audio, image tokens, pixels) says it in the same words; each calls ``check_counts``
first thing in its ``__init__``, before it reads or downloads anything.

``Folder`` is what a data module's ``write_folders()`` returns: the folders its ``prepare_data`` /
``setup`` will still write into (a download's root, the gpt2 token file's folder, the audio and image
token caches), which the command line checks before anything runs
(``lit_genai.cli_checks.check_writable``); ``nested`` moves a wrapped module's keys under the
wrapper's (``data.init_args.images.init_args.root``).

Shape legend: none (integers and paths only).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from lit_genai.errors import ConfigError

KEY = "data.init_args"  # where a data module's arguments sit in the YAML and on the command line

# name -> (least value, what it counts). 1 where a run needs at least one; 0 where none is a choice
# (no held-out images, loading in the main process).
COUNTS: dict[str, tuple[int, str]] = {
    "batch_size": (1, "the examples per batch, and the sample indices per predict batch"),
    "predict_samples": (1, "the number of samples predict draws and writes"),
    "num_workers": (0, "the DataLoader worker processes; 0 loads in the main process"),
    "val_size": (0, "the validation images held out"),
    "test_size": (0, "the test images held out"),
    "train_size": (1, "the training images drawn"),
    "held_out_size": (0, "the images of held-out combinations drawn"),
    "steps_per_epoch": (1, "the training batches per epoch"),
    "block_size": (1, "the tokens per training sequence"),
    "crop_length": (1, "the samples per crop the model reads"),
    "image_size": (1, "the height and width of the images in pixels"),
}


def check_counts(owner: str, **counts: int) -> None:
    """Raise one ``ConfigError`` line for the first count below its least value in ``COUNTS``.

    Args:
        owner: The data module's class name, said in the message (``MNIST5k``): a wrapped image
            module's key is ``data.init_args.images.init_args.<name>``, not ``data.init_args.<name>``.
        counts: ``name=value`` for names of ``COUNTS``.

    Raises:
        ConfigError: e.g. ``data.init_args.predict_samples=0 (MNIST5k) must be at least 1: the number
            of samples predict draws and writes``.
    """
    for name, value in counts.items():
        least, meaning = COUNTS[name]
        if value < least:
            raise ConfigError(f"{KEY}.{name}={value} ({owner}) must be at least {least}: {meaning}")


class Folder(NamedTuple):
    """A folder a command will write into, as a data module's ``write_folders()`` returns it (and the
    command line's own, ``lit_genai.cli_checks.folders_to_write``), checked before anything runs.

    Attributes:
        what: What it is and the option that sets it: ``the MNIST download folder (data.init_args.root)``.
        path: The folder (it may not exist yet).
        fix: What to do when it cannot be written: ``pass --data.root <a writable folder>``.
    """

    what: str
    path: Path
    fix: str


def nested(folders: list[Folder], name: str) -> list[Folder]:
    """A wrapped data module's ``folders`` (``data.init_args.<name>``, e.g. ``images``) as the wrapper
    gives them: their keys and options moved under ``data.init_args.<name>.init_args``."""
    key, option = f"{KEY}.{name}.init_args.", f"--data.{name}.init_args."
    return [Folder(f.what.replace(f"{KEY}.", key), f.path, f.fix.replace("--data.", option)) for f in folders]
