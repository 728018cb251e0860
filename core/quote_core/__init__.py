"""The vocabulary the quote service, its publisher and its clients share: one
implementation of each idea, with orjson as its only dependency.

Modules: `quote` (the quote model and its validation), `text` (the seed's text form of a
quote), `protocol` (the wire protocol's version, codes, modes, limits and the clients'
reconnect policy), `backoff` (jittered retry delays).
"""
