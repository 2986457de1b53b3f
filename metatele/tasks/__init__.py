"""Task families: the inner problems (seeded batches of LeakyReLU networks and their data) and the network itself.

Importing the package registers every task family (``metatele.tasks.family.FAMILIES``): the
regression family is defined in :mod:`metatele.tasks.family`, the digits family in
:mod:`metatele.tasks.digits`.
"""
from . import digits as _digits  # noqa: F401  (registers the digits family)
