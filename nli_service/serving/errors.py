"""What the serving layer refuses with; the API maps each to an HTTP status."""

from __future__ import annotations

import math


class ServingError(Exception):
    """A request the serving layer cannot answer now; ``retry_after`` is in seconds, when retrying helps."""

    retry_after: int | None = None


class NotReady(ServingError):
    """The model is not loaded (yet)."""

    retry_after = 5

    def __init__(self) -> None:
        super().__init__("the model is not loaded yet; retry shortly")


class Overloaded(ServingError):
    """This worker cannot take the request now; retry after ``retry_after`` seconds or elsewhere."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(f"this worker is overloaded: {reason}; retry shortly")
        self.retry_after = max(1, math.ceil(retry_after))


class ClientGone(ServingError):
    """The client closed its connection before its answer was computed: the work was dropped."""

    def __init__(self) -> None:
        super().__init__("the client closed the connection; the request was not computed")


class RequestTimedOut(ServingError):
    """The request ran past its deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"request took longer than {seconds:g} s")
        self.seconds = seconds
