"""The one exception tree of the service.

Library code raises these; websockets, SQLAlchemy and OS errors are translated where they are caught
(`from exc`).
"""

from __future__ import annotations


class DloopError(Exception):
    """Root of every error the service raises on purpose."""


class ConfigError(DloopError):
    """A setting is missing or invalid. The message names the setting, never a secret value."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class SchemaOutOfDate(DloopError):
    """The database schema is not at the migration head."""


class StorageError(DloopError):
    """The database could not be read or written."""


class LaneLost(DloopError):
    """This instance no longer owns a node's lane (its lease lapsed or another instance took it over):
    nothing was recorded, so nothing may be broadcast for that node."""

    def __init__(self, address: str, why: str) -> None:
        super().__init__(f"lane {address}: {why}")
        self.address = address
        self.why = why


class ChainError(DloopError):
    """A chain call failed."""


class TransientChainError(ChainError):
    """Worth retrying with backoff: timeouts, dropped connections, rate limits."""


class RateLimited(TransientChainError):
    """HTTP 429 or JSON-RPC -32005."""


class ContractRevert(ChainError):
    """The contract reverted; `error_name` is the decoded custom error when known."""

    def __init__(self, error_name: str, detail: str = "") -> None:
        super().__init__(f"{error_name}{': ' + detail if detail else ''}")
        self.error_name = error_name


class InsufficientFunds(ChainError):
    """The sending account cannot pay for gas."""


class NonceError(ChainError):
    """Nonce too low or too high: the lane must resync from the chain."""


class Underpriced(ChainError):
    """Replacement or transaction fee too low: bump and resend."""


class MalformedAnswer(TransientChainError):
    """The node's answer to one request was not JSON-RPC (a proxy's HTML error page, a cut frame).

    Only that request is lost; the connection is kept. `repeatable` is false for requests that must not be
    sent again blindly (a broadcast: the node may have taken it), so retry helpers leave those to the caller.
    """

    def __init__(self, message: str, *, method: str = "", repeatable: bool = True) -> None:
        super().__init__(message)
        self.method = method
        self.repeatable = repeatable


def error_leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups; an error that is not a group is its own one leaf."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in error_leaves(inner)]
    return [exc]


def first_error(exc: BaseException) -> BaseException:
    """The error to report for `exc`: inside (nested) exception groups, the first DloopError, else the
    first leaf. A task group's own text ("unhandled errors in a TaskGroup") names nothing."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = [first_error(inner) for inner in exc.exceptions]
    return next((leaf for leaf in leaves if isinstance(leaf, DloopError)), leaves[0] if leaves else exc)
