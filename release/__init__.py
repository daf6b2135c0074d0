"""Checks of what the project ships: the container image (``make image-test``) and the wheel (``make wheel-test``)."""
