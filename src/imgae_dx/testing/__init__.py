"""Loopback servers and fixtures used by the tests, the demo and the benchmarks.

* :mod:`imgae_dx.testing.range_server` — :class:`RangeServer`, one file over HTTP/1.1 with
  ``Range``, ETag/Last-Modified, signed expiring URLs and injectable faults (:class:`Faults`).
"""

from imgae_dx.testing.range_server import Faults, RangeServer

__all__ = ["Faults", "RangeServer"]
