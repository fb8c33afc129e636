"""Host arrays that XLA's CPU client can use in place, quick to fill.

`jax.device_put` onto the CPU device aliases a numpy array whose data
starts on a 64-byte boundary instead of copying it; numpy's own
allocations of large arrays start 16 bytes past a page boundary. Large
arrays are mapped with transparent huge pages requested (Linux
`madvise(MADV_HUGEPAGE)`, where the kernel leaves it to the program), so
writing them the first time takes one page fault per 2 MiB instead of per
4 KiB: on the development VM, filling 300 MB took 0.54 s in a numpy
allocation and 0.14 s in such a mapping.
"""
import mmap

import numpy as np

_MAPPED_FROM = 1 << 22  # bytes: smaller arrays come from numpy's allocator


def aligned_empty(shape, dtype=np.float32) -> np.ndarray:
  """An array (contents unspecified) whose data starts on a 64-byte
  boundary: the training images, held once rather than twice while the
  simulation is built, and the rows a checkpoint writes."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape)) * dtype.itemsize
  if nbytes >= _MAPPED_FROM:
    buf = mmap.mmap(-1, nbytes)  # page-aligned; freed with the array
    if hasattr(mmap, "MADV_HUGEPAGE"):
      buf.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buf, dtype).reshape(shape)
  buf = np.empty(nbytes + 64, np.uint8)
  start = -buf.ctypes.data % 64
  return buf[start:start + nbytes].view(dtype).reshape(shape)
