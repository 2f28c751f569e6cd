"""Decode workers: ``/predict``'s GDAL work (open, route, read tiles, blend, encode) in processes of their own.

``pool`` is the service's side, ``worker`` the process, ``session`` one request inside it, ``slab``
the shared memory between them. The event loop keeps HTTP, the batcher and copying bytes.
"""
