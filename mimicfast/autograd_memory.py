"""How much memory autograd holds for backward: :class:`SavedTensorPeak`, the one probe of saved tensors.

The full gradient's memory claim (one step's graph alive at a time, whatever T) and the CPU batch sizing of the
fast path (:mod:`mimicfast.fast.memory`) both measure what autograd graphs keep for backward, through this class.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class _Held:
    """A tensor saved for backward, as :class:`SavedTensorPeak` packs it; releases its bytes when autograd
    drops it (the graph is freed)."""

    __slots__ = ("key", "probe", "tensor")

    def __init__(self, tensor: torch.Tensor, probe: SavedTensorPeak, key: int) -> None:
        self.tensor, self.probe, self.key = tensor, probe, key

    def __del__(self) -> None:
        self.probe._release(self.key)


class SavedTensorPeak:
    """Context manager measuring the peak bytes that autograd graphs hold for backward at once.

    Counts the distinct storages of tensors saved for backward (``torch.autograd.graph.saved_tensors_hooks``)
    from when a graph saves them until it is freed, parameters excluded; works on any device, the meta device
    included (sizes only). This is the memory that grows with T when a backward through T steps keeps every
    step's graph; it leaves out the sampler's own state and the transient buffers of a backward, which do
    not depend on T.

    Attributes:
        peak: the largest number of bytes held at once inside the context.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._exclude = {t.untyped_storage()._cdata for t in exclude}
        self._live: dict[int, list[int]] = {}
        self.current = 0
        self.peak = 0

    def _pack(self, t: torch.Tensor) -> object:
        storage = t.untyped_storage()
        key = storage._cdata  # the storage's identity, also for meta tensors (whose data_ptr is 0)
        if key in self._exclude:
            return t
        entry = self._live.get(key)
        if entry is None:
            self._live[key] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        else:
            entry[1] += 1
        return _Held(t, self, key)

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]

    @staticmethod
    def _unpack(packed: object) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Held) else packed

    def __enter__(self) -> SavedTensorPeak:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
