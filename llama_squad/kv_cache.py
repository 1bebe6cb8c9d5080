"""A key/value cache that appends a decoding step in place instead of copying the whole cache.

transformers' ``DynamicLayer`` appends each new token with ``torch.cat``: every decoding step allocates new keys and
values for every row, prompt included, and copies the old ones into them, so for a moment a layer is held twice.
:class:`PreallocatedLayer` keeps its keys and values in a buffer with room for the tokens still to come and writes
each step into it. Its ``keys``/``values`` are views of the filled columns, so everything else ``DynamicLayer`` does
(lengths, masks, ``crop``, selecting rows) works unchanged, and the attention reads the same numbers. A prefix shared
by several prompts is copied once, straight into each row's buffer (``batch_select_indices`` with room for the
prompts' own tokens and their answers): nothing is copied again while they are answered.
"""

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in a buffer with ``room`` free columns after them.

    An update that fits the free columns is written in place; one that does not (or one after another method replaced
    ``keys``, e.g. ``batch_select_indices``) copies the cache once into a new buffer with ``room`` columns to spare.
    """

    def __init__(self, room: int = 0):
        super().__init__()
        self.room = room
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def owns_cache(self) -> bool:
        """Whether ``keys``/``values`` are still the first columns of this layer's buffers."""
        buffer = self.key_buffer
        return (
            buffer is not None
            and self.keys.data_ptr() == buffer.data_ptr()
            and self.values.data_ptr() == self.value_buffer.data_ptr()
            and self.keys.shape[:2] == buffer.shape[:2]
            and self.keys.stride() == buffer.stride()
            and self.values.stride() == self.value_buffer.stride()
        )

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        filled = self.get_seq_length()
        new = key_states.shape[-2]
        if not (self.owns_cache() and filled + new <= self.key_buffer.shape[-2]):
            self.key_buffer = self.new_buffer(self.keys, key_states, filled + new + self.room)
            self.value_buffer = self.new_buffer(self.values, value_states, filled + new + self.room)
        self.key_buffer[:, :, filled : filled + new] = key_states
        self.value_buffer[:, :, filled : filled + new] = value_states
        self.keys = self.key_buffer[:, :, : filled + new]
        self.values = self.value_buffer[:, :, : filled + new]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (repeated, for a prefix shared by several prompts), copied straight into a new
        buffer with ``room`` columns to spare: the next updates write in place."""
        filled = self.get_seq_length()
        if filled == 0:
            return
        self.key_buffer = allocate(self.keys, len(indices), filled + self.room)
        self.value_buffer = allocate(self.values, len(indices), filled + self.room)
        row = 0
        sources, counts = torch.unique_consecutive(indices, return_counts=True)
        for source, count in zip(sources.tolist(), counts.tolist(), strict=True):  # a copy per run of equal rows
            self.key_buffer[row : row + count, :, :filled] = self.keys[source]
            self.value_buffer[row : row + count, :, :filled] = self.values[source]
            row += count
        self.keys = self.key_buffer[:, :, :filled]
        self.values = self.value_buffer[:, :, :filled]

    @staticmethod
    def new_buffer(cached: torch.Tensor, states: torch.Tensor, columns: int) -> torch.Tensor:
        """A buffer of ``columns`` columns for the rows of ``states``, starting with the ``cached`` ones (if any)."""
        buffer = allocate(states, states.shape[0], columns)
        if cached.numel():
            buffer[:, :, : cached.shape[-2]] = cached
        return buffer


def allocate(like: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """An empty (rows, heads, columns, head_dim) tensor with the heads, head size, dtype and device of ``like``."""
    return like.new_empty((rows, like.shape[1], columns, like.shape[-1]))


def preallocated_cache(model, room: int) -> DynamicCache:
    """An empty ``DynamicCache`` for ``model`` whose full-attention layers are :class:`PreallocatedLayer` with ``room``
    columns to spare (sliding-window and other special layers stay as the library builds them)."""
    config = getattr(model, "get_base_model", lambda: model)().config
    cache = DynamicCache(config=config)
    cache.layers = [PreallocatedLayer(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def make_room(cache, room: int) -> None:
    """Give every :class:`PreallocatedLayer` of ``cache`` ``room`` columns to spare at its next reallocation (before a
    ``generate`` call that will write up to ``room`` tokens more)."""
    for layer in getattr(cache, "layers", []):
        if isinstance(layer, PreallocatedLayer):
            layer.room = room
