"""The inference engine: tokeniser and model, no HTTP.

Nothing here imports Flask. Importing this package does not import torch either;
``nli_service.inference.engine`` and ``.loader`` do.
"""
