"""Where the CPU tensors' memory comes from: huge pages for large tensors, set up before torch
allocates anything. Standard library only, so that an entry point can call it before importing torch.

A diffusion step on the CPU makes and frees hundreds of large tensors (an SD 1.5 step at 512x512
has activations of 10 to 80 MB each). glibc hands each large block out as a fresh mapping, and the
kernel fills it on first touch one 4 KiB page at a time: about a million page faults per step,
measured at 11% of an SD 1.5 step (18.6 -> 16.6 s, 2 cores) and a third of a large VAE decode.
torch can align its allocations of 2 MiB and more and ask the kernel for transparent huge pages
for them (``THP_MEM_ALLOC_ENABLE``, read by torch once, at its first CPU allocation): the faults
drop tenfold, for about 2% more peak memory (2 MiB granularity at the end of a block).

Keeping freed blocks in glibc's heap instead (``mallopt`` thresholds) measured the same speed but
30% more peak memory, and is invisible to the address-space planning of ``core.devices``.

It is a setting of the process, so only entry points (launch.py, ``python -m core``, the
benchmark) call ``use_huge_pages``; a library user keeps whatever their process has. A value
already in the environment wins (``THP_MEM_ALLOC_ENABLE=0`` turns it off). Where the kernel has
transparent huge pages disabled (``never``) the setting changes nothing.
"""
from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"
KERNEL_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def use_huge_pages(environ: MutableMapping[str, str] | None = None) -> bool:
    """Ask torch for huge pages for large CPU tensors unless the environment already says.
    -> whether torch in this process will use them (False when the user turned them off, or
    torch has been imported already: it may have read the variable)."""
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules and environ is os.environ and HUGE_PAGES_VARIABLE not in environ:
        return False  # too late to be sure torch sees it; leave the process as it is
    environ.setdefault(HUGE_PAGES_VARIABLE, "1")
    return environ[HUGE_PAGES_VARIABLE] not in ("", "0")


def kernel_allows_huge_pages(setting_file: str = KERNEL_SETTING) -> bool:
    """Whether the kernel gives transparent huge pages to memory that asks for them: its
    setting reads ``[always] madvise never`` with the chosen mode in brackets."""
    try:
        with open(setting_file) as f:
            return "[never]" not in f.read()
    except OSError:
        return False
