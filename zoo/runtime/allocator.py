"""Keep freed CPU memory in the process, so that every step does not fault its pages in again.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves large blocks (above a
threshold that starts at 128 KiB and moves with the allocation history) with fresh ``mmap``
pages and unmaps them when they are freed, and it gives the free top of its heap back to the
system. A forward's activations are a few MiB to a few hundred MiB, so they are paged in anew,
one 4 KiB fault at a time, in every forward and every training step. How often depends on the
allocation history: the same model measures slower or faster depending on what had been built
before it.

:func:`reuse_freed_memory` sets two glibc options (``mallopt``): no block is served by ``mmap``
(every block comes from the heap, where a freed block is reused by the next allocation), and up
to 1 GiB of free heap top is kept. PyTorch's CUDA caching allocator does the same for GPU memory.
The cost: the resident set does not shrink after a peak, and heap fragmentation adds a little to
the peak. The project's tools call it at start; call it first in your own scripts to get the same
speed. What it saves (page faults and time per forward and step) is measured in
docs/benchmarks.md ("Where the CPU speed comes from"; ``--default-allocator`` measures without it).
"""
import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30

_applied = False


def _glibc():
    """The C library as a ctypes handle, or None where it is not glibc."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    except OSError:
        return None


def return_freed_memory() -> None:
    """Hand the heap's free memory back to the system now (glibc's ``malloc_trim``), so that a
    measurement of the resident set starts from what is in use, not from what was freed."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse (see the module docstring). Returns whether it
    is in effect: False on a C library other than glibc (musl, macOS, Windows), where nothing
    is changed. Calling it again does nothing."""
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    # glibc still maps a block when the heap cannot grow (sbrk fails), so no allocation can fail
    # because of M_MMAP_MAX = 0.
    _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
