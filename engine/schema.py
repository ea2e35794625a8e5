"""The canonical transaction: one definition for the API, history files and the simulator.

Every other module reads payments through this module's names. History files may carry the
extra columns in ``HISTORY_COLUMNS`` (labels and the bank's answers, with the time each became known).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticKnownError

PAN_SECRET_ENV = "ANTIFRAUD_PAN_SECRET"

# What an identifier's stripping removes (Unicode White_Space, as pydantic-core trims), spelled out
# for the schema: JSON Schema's `\s` is another set (it has U+FEFF and not U+0085).
_BLANK = r"\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _at_most_128(value: object) -> object:
    # the schema's maxLength counts the characters as sent, before stripping
    if isinstance(value, str) and len(value) > 128:
        raise PydanticKnownError("string_too_long", {"max_length": 128})
    return value


# An id as the schema says it: 1-128 characters as sent, not only blanks; stored stripped.
Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, strip_whitespace=True, pattern=f"[^{_BLANK}]"),
    BeforeValidator(_at_most_128),
]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]

#: How much a caller may attach to a payment: small and flat, so that it stays cheap to store with every
#: decision and to read in rules (engine/rules: `metadata.loyalty_tier == "gold"`).
METADATA_MAX_KEYS = 20
METADATA_KEY_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
METADATA_MAX_STRING = 256
MetadataKey = Annotated[str, StringConstraints(pattern=METADATA_KEY_PATTERN)]


def _metadata_value(value: object) -> str | bool | int | float:
    # One clear error per bad value (a plain union would report one error per member). Strict:
    # "3" stays a string and 3 an integer, as the caller sent them; a rule compares like with like.
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        if len(value) > METADATA_MAX_STRING:
            raise PydanticKnownError("string_too_long", {"max_length": METADATA_MAX_STRING})
        return value
    raise ValueError(
        f"a metadata value must be a string (at most {METADATA_MAX_STRING} characters), a finite "
        "number or a boolean: metadata is flat, with no objects, lists or nulls"
    )


MetadataValue = Annotated[
    str | bool | int | float,
    PlainValidator(_metadata_value),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "maxLength": METADATA_MAX_STRING},
                {"type": "number"},
                {"type": "boolean"},
            ]
        }
    ),
]

Channel = Literal["ecom", "pos", "moto"]


def _utc(value: datetime) -> datetime:
    # A timestamp without an offset is ambiguous in front of a bank: refuse it rather than guess.
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a UTC offset (RFC 3339), e.g. 2026-01-31T12:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp is out of range once converted to UTC") from None


class Transaction(BaseModel):
    """A card payment about to be sent to the bank for authorization."""

    # The schema says what `_tokenize_pan` enforces: a card_id or a pan, not both. Under `allOf`, so
    # that client generators still see one object with every property (a top-level anyOf made
    # openapi-python-client generate a union of two one-field classes).
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "allOf": [
                {
                    "anyOf": [
                        {"properties": {name: {"type": "string"}}, "required": [name]}
                        for name in ("card_id", "pan")
                    ]
                },
                {
                    "not": {
                        "properties": {"card_id": {"type": "string"}, "pan": {"type": "string"}},
                        "required": ["card_id", "pan"],
                    }
                },
            ],
            "examples": [
                {
                    "transaction_id": "tx-20260301-0001",
                    "timestamp": "2026-03-01T12:00:00Z",
                    "card_id": "tok_4f9c2a",
                    "merchant_id": "m_1042",
                    "amount": 42.5,
                    "currency": "EUR",
                    "channel": "ecom",
                    "ip": "203.0.113.7",
                    "device_id": "dev_77",
                    "metadata": {"loyalty_tier": "gold"},
                }
            ],
        },
    )

    transaction_id: Identifier
    timestamp: Annotated[datetime, AfterValidator(_utc)]
    card_id: Identifier | None = Field(
        default=None, description="Opaque card token. Required unless `pan` is sent instead."
    )
    pan: Annotated[str, StringConstraints(pattern=r"^[0-9]{12,19}$")] | None = Field(
        default=None,
        description="Raw card number; replaced at once by a keyed hash in `card_id`, never stored.",
        repr=False,
        exclude=True,
    )
    merchant_id: Identifier
    amount: float = Field(ge=0, le=1e9, allow_inf_nan=False)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    customer_id: Identifier | None = None
    email: Annotated[str, StringConstraints(max_length=254, strip_whitespace=True, to_lower=True)] | None = (
        None
    )
    ip: Annotated[str, StringConstraints(max_length=64)] | None = None
    device_id: Identifier | None = None
    card_bin: Annotated[str, StringConstraints(pattern=r"^[0-9]{6,8}$")] | None = None
    card_country: CountryCode | None = None
    ip_country: CountryCode | None = None
    billing_country: CountryCode | None = None
    shipping_country: CountryCode | None = None
    mcc: Annotated[str, StringConstraints(pattern=r"^[0-9]{4}$")] | None = None
    channel: Channel | None = None
    payment_method: Annotated[str, StringConstraints(max_length=32)] | None = None
    # strict: 0.0 or "yes" is a client bug to refuse, not a guess to make
    card_on_file: StrictBool | None = None
    authenticated: StrictBool | None = None
    terminal_id: Identifier | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        default=None,
        max_length=METADATA_MAX_KEYS,
        description=(
            f"Your own flat attributes of the payment (at most {METADATA_MAX_KEYS} keys matching "
            f"{METADATA_KEY_PATTERN}; values: strings of at most {METADATA_MAX_STRING} characters, "
            "numbers or booleans). Stored with the decision and readable in rules as metadata.<key>."
        ),
        examples=[{"loyalty_tier": "gold", "order_count": 3}],
        json_schema_extra={"propertyNames": {"pattern": METADATA_KEY_PATTERN}},
    )
    test: bool = Field(
        default=False,
        description=(
            "A test payment: scored as a live one would be, but it moves no counter and is not "
            "stored in the decision log; the answer says test: true."
        ),
    )

    @model_validator(mode="after")
    def _tokenize_pan(self) -> Transaction:
        if self.pan is None:
            if self.card_id is None:
                raise ValueError("card_id is required (or send pan, which is tokenized at once)")
            return self
        if self.card_id is not None:
            raise ValueError("send either card_id or pan, not both")
        pan = self.pan
        # frozen model: write through object.__setattr__, then drop the PAN from the instance.
        object.__setattr__(self, "card_id", tokenize_pan(pan))
        if self.card_bin is None:
            object.__setattr__(self, "card_bin", pan[:6])
        object.__setattr__(self, "pan", None)
        return self


def pan_secret() -> bytes:
    """The HMAC key for PAN tokenization, from the environment only."""
    secret = os.environ.get(PAN_SECRET_ENV, "")
    if len(secret) < 16:
        raise ValueError(
            f"a raw pan was sent but {PAN_SECRET_ENV} is not set (at least 16 characters): "
            "set it in the service's environment, or send the card token as card_id"
        )
    return secret.encode()


def tokenize_pan(pan: str) -> str:
    """Replace a raw card number by a stable keyed hash; the PAN cannot be recovered from it."""
    digest = hmac.new(pan_secret(), pan.encode(), hashlib.sha256).hexdigest()
    return "tok_" + digest[:40]


#: What a request may carry beyond the payment's own columns: never a history file's column.
REQUEST_ONLY_FIELDS: tuple[str, ...] = ("pan", "metadata", "test")
# Columns of a transaction, in order; the API body and history files share them.
TRANSACTION_COLUMNS: tuple[str, ...] = tuple(
    n for n in Transaction.model_fields if n not in REQUEST_ONLY_FIELDS
)
REQUIRED_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "timestamp",
    "card_id",
    "merchant_id",
    "amount",
    "currency",
)

# What a history file adds: the truth and the feedback the bank and the cardholder gave, each with
# the time it became known, so that offline features only see what production would have seen.
HISTORY_COLUMNS: tuple[str, ...] = (
    "label",  # 1 fraud, 0 legitimate
    "label_time",  # when the label became known (chargeback date)
    "bank_outcome",  # approved | declined
    "decline_code",
    "outcome_time",  # when the bank answered
    "refund_time",  # when a refund was reported, if any
    "cancel_time",  # when a cancellation was reported, if any
)
