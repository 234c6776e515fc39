"""A port someone else holds is a setting to change, not a crash: find it in any error."""

from __future__ import annotations

import errno


def address_in_use(exc: BaseException) -> str | None:
    """A one-line description of an EADDRINUSE anywhere in `exc`'s causes, contexts or
    exception groups (trio wraps a failed bind in both); None when there is none."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    described: str | None = None
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if described is None and "in use" in str(e) and not isinstance(e, BaseExceptionGroup):
            described = " ".join(str(e).split())  # the most specific wording met first
        if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
            return described or " ".join(str(e).split())
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return None
