"""Audio clips back to back in one waveform, and the crops the audio data modules train and validate on.

- ``Clips``: mono clips in one (N,) float16 file mapped with ``np.memmap(mode="r")`` (a set larger
  than memory trains; each worker process maps it itself) or one float32 array in memory.
- ``RandomCrops`` (training): crop k starts at a uniform valid start over every given clip, drawn
  from ``np.random.default_rng((seed, k))``, so item ``e * n + k`` is crop k of epoch e
  (``lit_genai.data.loaders.EpochIndices``): runs repeat, epochs differ, ranks draw distinct crops.
- ``FixedCrops`` (validation, test): consecutive crops of each clip with stride ``crop_length``, so
  every sample but a crop's first is predicted once; deterministic.

Items: ``(tokens (T + 1,) int64 mu-law ids, label () int64[, mels (M, F) float32])``.

Shapes: N samples of all clips, L_i samples of clip i, T crop_length, M mel bands, F frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_genai.data.audio.dsp import mu_law_encode


class Clips:
    """Mono clips back to back in one (N,) waveform: a float16 file mapped with ``np.memmap(mode="r")``
    on first use (in each worker process: the map itself is not pickled), or an array in memory.

    Args:
        lengths: (n,) samples of each clip.
        path: The float16 file, or None with ``data``.
        data: (N,) float32 waveform in memory, or None with ``path``.
    """

    def __init__(
        self, lengths: Sequence[int], path: Optional[Path] = None, data: Optional[np.ndarray] = None
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)  # (n,)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)  # (n,)
        self.path, self._data = path, data

    def __len__(self) -> int:
        return len(self.lengths)

    def _array(self) -> np.ndarray:
        if self._data is None:
            total = int(self.lengths.sum())
            self._data = (
                np.memmap(self.path, dtype=np.float16, mode="r", shape=(total,))
                if total
                else np.zeros(0, np.float16)
            )
        return self._data

    def clip(self, i: int) -> np.ndarray:
        """(L_i,) float32: the whole clip i."""
        start = int(self.offsets[i])
        return np.asarray(self._array()[start : start + int(self.lengths[i])], dtype=np.float32)

    def crop(self, i: int, start: int, n: int) -> np.ndarray:
        """(n,) float32: samples [start, start + n) of clip i, zeros past its end."""
        begin = int(self.offsets[i]) + start
        stop = int(self.offsets[i]) + min(start + n, int(self.lengths[i]))
        out = np.zeros(n, dtype=np.float32)
        out[: max(stop - begin, 0)] = self._array()[begin:stop]
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_data"] = None
        return state


class CropSet(Dataset):
    """Crops of ``crop_length + 1`` samples as ``(tokens (T + 1,) int64, label () int64[, mels (M, F)])``.

    Args:
        clips: The waveforms.
        labels: (n,) int64 label of each clip.
        crop_length: T; crops hold T + 1 samples.
        mels: None, or a function (T + 1,) waveform -> (M, F) log-mel frames.
    """

    def __init__(self, clips: Clips, labels: np.ndarray, crop_length: int, mels: Any = None) -> None:
        self.clips, self.labels, self.crop_length, self.mels = clips, labels, crop_length, mels

    def _item(self, clip: int, start: int) -> tuple[Tensor, ...]:
        wave = torch.from_numpy(self.clips.crop(clip, start, self.crop_length + 1))  # (T + 1,)
        out = (mu_law_encode(wave), torch.tensor(int(self.labels[clip]), dtype=torch.long))
        return out if self.mels is None else (*out, self.mels(wave))


class RandomCrops(CropSet):
    """Crop k starts at a uniform valid start over all the given clips, drawn from
    ``default_rng((seed, k))``; a clip shorter than the crop (zero-padded) has the one start 0.

    Args:
        clips, labels, crop_length, mels: As ``CropSet``.
        members: (m,) the clips crops are drawn from.
        seed: First entropy word of every crop's generator.
        length: Crops per epoch (``len`` of the set; indices beyond it belong to later epochs).
    """

    def __init__(
        self,
        clips: Clips,
        labels: np.ndarray,
        crop_length: int,
        members: Sequence[int],
        seed: int,
        length: int,
        mels: Any = None,
    ) -> None:
        super().__init__(clips, labels, crop_length, mels)
        self.members = np.asarray(members, dtype=np.int64)  # (m,)
        starts = np.maximum(clips.lengths[self.members] - crop_length, 1)  # (m,) valid starts per clip
        self.cumulative = np.cumsum(starts)  # (m,)
        self.seed, self.length = seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> tuple[Tensor, ...]:
        u = int(np.random.default_rng((self.seed, int(k))).integers(int(self.cumulative[-1])))
        j = int(np.searchsorted(self.cumulative, u, side="right"))
        start = u - (int(self.cumulative[j - 1]) if j else 0)
        return self._item(int(self.members[j]), start)


class FixedCrops(CropSet):
    """Consecutive crops of each given clip: crop j of a clip starts at j * crop_length (stride T), a
    clip shorter than the crop gives one zero-padded crop."""

    def __init__(
        self, clips: Clips, labels: np.ndarray, crop_length: int, members: Sequence[int], mels: Any = None
    ) -> None:
        super().__init__(clips, labels, crop_length, mels)
        index = []
        for i in members:
            count = max((int(clips.lengths[i]) - 1) // crop_length, 1)
            index += [(int(i), j * crop_length) for j in range(count)]
        self.index = index  # (clip, start) of each crop

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int) -> tuple[Tensor, ...]:
        return self._item(*self.index[j])
