"""Write tracking between dumps: which pages changed since the last one.

* :mod:`.uffd` — userfaultfd asynchronous write-protect (Linux >= 6.7),
  read back as PAGE_IS_WRITTEN through PAGEMAP_SCAN;
* soft-dirty (clear_refs "4" + PAGE_IS_SOFT_DIRTY) where the kernel has it.
"""
