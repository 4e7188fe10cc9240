"""Input normalisation shared by the order, trade and account stores (private)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from ..errors import ValidationError
from ..keys import validate_exchange
from ..models import Model, convert

__all__ = ["to_model"]


M = TypeVar("M", bound=Model)


def to_model(data: object, model: type[M], exchange: str | None, *, required: bool) -> M:
    """Validate ``data`` (a model or a ccxt dict) into ``model`` with a lower-case exchange.

    ``exchange`` fills a missing ``exchange`` field; a different one already in
    the data raises ``ValidationError("exchange")``; ``required`` makes a
    missing exchange an error too.

    Example::

        order = to_model(ccxt_order, Order, "Binance", required=True)   # exchange "binance"
    """
    if exchange is not None:
        exchange = validate_exchange(exchange)
    if isinstance(data, model):
        item = data
    elif isinstance(data, Mapping):
        values: dict[str, Any] = dict(data)
        if isinstance(values.get("exchange"), str) and values["exchange"]:
            values["exchange"] = validate_exchange(values["exchange"])
        # filling the exchange during conversion validates the model once, not twice
        item = (
            convert(values, model)
            if exchange is None
            else convert(values, model, exchange=exchange)
        )
    else:
        raise ValidationError(
            model.__name__.lower(),
            f"expected a {model.__name__} or a dict, not {type(data).__name__}",
        )
    own: str | None = getattr(item, "exchange", None)
    # equal to the exchange validated above: no need to check it again
    current = own if own is None or own == exchange else validate_exchange(own)
    if current is not None and exchange is not None and current != exchange:
        raise ValidationError("exchange", f"the data says {own!r}, the call {exchange!r}")
    final = current or exchange
    if final is None:
        if required:
            raise ValidationError("exchange", "required: pass exchange= or set it in the data")
        return item
    if own != final:
        item = item.replace(exchange=final)
    return item
