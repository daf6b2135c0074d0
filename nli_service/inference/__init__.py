"""The inference engine: tokenise, plan chunks, forward, unbatch; backends, quantisation, model loading.

Imports nothing from ``nli_service`` outside itself and takes plain arguments. Importing
this package does not import torch; ``engine``, ``loader`` and ``backends`` do.
"""
