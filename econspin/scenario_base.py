"""What every part of a scenario shares: its errors, strict models, and models with variants.

Every model of a scenario refuses unknown keys (:class:`StrictModel`); a model whose one field
picks a variant (a distribution, a correction's form) reads only that variant's options and
refuses the others by their key path (:class:`VariantModel`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message is one line for the user."""


class ScenarioWarning(UserWarning):
    """A scenario that runs, but likely not as meant (an agent left out, an event never reached); one line."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
# what torch.Generator.manual_seed takes (the projection and ffn seeds go there as they are)
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]


class VariantModel(StrictModel):
    """A model whose field ``CHOICE`` picks a variant, and each variant reads only some options.

    ``READS`` maps every variant to the options it reads, with their defaults. An option the
    chosen variant does not read stays None, and giving it is refused with its key path, so
    that no option is accepted and then silently ignored. Options read by every variant are
    ordinary fields. ``CHOICE`` and whatever ``options_read`` looks at come first in the
    class, since an option's check sees only the fields declared before it.
    """

    CHOICE: ClassVar[str]
    READS: ClassVar[dict[str, dict[str, Any]]]

    @classmethod
    def options_read(cls, data: dict) -> dict[str, Any]:
        """The options the variant described by ``data`` reads, with their defaults."""
        choice = data.get(cls.CHOICE, cls.model_fields[cls.CHOICE].default)
        return cls.READS.get(choice, {}) if isinstance(choice, str) else {}

    @classmethod
    def variant_name(cls, data: dict) -> str:
        return f"{cls.CHOICE} {data[cls.CHOICE]}"

    @model_validator(mode="before")
    @classmethod
    def _defaults_of_the_variant(cls, data):
        if isinstance(data, dict):
            unset = {key: value for key, value in cls.options_read(data).items() if data.get(key) is None}
            data = {**data, **unset}
        return data

    @field_validator("*")
    @classmethod
    def _refuse_unread_options(cls, value, info: ValidationInfo):
        optional = set().union(*cls.READS.values())
        if value is None or info.field_name not in optional or cls.CHOICE not in info.data:
            return value
        if info.field_name not in cls.options_read(info.data):
            readers = [choice for choice, options in cls.READS.items() if info.field_name in options]
            only = "" if info.data[cls.CHOICE] in readers else f" (only {cls.CHOICE} {' or '.join(readers)} does)"
            raise ValueError(f"{cls.variant_name(info.data)} does not use it{only}; remove it")
        return value
