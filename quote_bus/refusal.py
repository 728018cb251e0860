"""What counts as Redis refusing us, for the service's feeds and the publisher alike: both
stop (exit 3) on a refusal before their first success instead of retrying for ever."""

from __future__ import annotations

from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)


def is_refusal(exc: BaseException) -> bool:
    """Redis said no in a way that means the URL is wrong (a password, user or database).
    After a first success it is taken as passing (a password being rotated) and retried.
    The replies of a topology on the move (a slot moved, a cluster electing, a primary
    demoted to replica) are error replies too, but never refusals."""
    return (isinstance(exc, (AuthenticationError, AuthorizationError, ResponseError))
            and not isinstance(exc, (AskError, TryAgainError, ClusterDownError, ReadOnlyError)))
