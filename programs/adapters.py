"""DSPy's chat and JSON adapters, with the per-call work that depends only on the signature cached.

DSPy's adapters rebuild, on every LM call, what a signature alone decides: the system message
(field descriptions, the output structure, the instructions), the output-format reminder, and,
for the JSON adapter, a pydantic model of the output fields (``pydantic.create_model`` and its
schema) sent as the response format. Each text field value also goes through a fresh pydantic
``TypeAdapter`` just to come back as the same string. On a fast model these dominate the
framework's cost of a call (about 4 of DSPy's 6 ms of CPU per call on a one-node classifier).

:class:`ChatAdapter` and :class:`JSONAdapter` are DSPy's, with those results kept per signature
class (a signature is immutable: optimizers make a new class to change instructions or fields) and
plain strings formatted directly. The messages and request they produce are DSPy's, exactly:
``tests/programs/test_adapters.py`` compares them with DSPy's own adapters field by field.

Example:
    >>> import dspy
    >>> from programs.adapters import JSONAdapter
    >>> with dspy.context(adapter=JSONAdapter()):  # doctest: +SKIP
    ...     program(question="...")
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

import dspy
import pydantic
from dspy.adapters import json_adapter as _dspy_json
from dspy.adapters.utils import format_field_value

__all__ = ["ChatAdapter", "JSONAdapter"]


def _format_value(field_info: Any, value: Any) -> str:
    """``format_field_value`` of DSPy, without its pydantic round trip for a plain string."""
    if type(value) is str:  # pydantic's JSON form of a str is the str itself
        return value
    return format_field_value(field_info=field_info, value=value)


def _format_fields(fields_with_values: dict[Any, Any]) -> str:
    """DSPy's ``format_field_with_value`` for the user's side: ``[[ ## name ## ]]`` and the value."""
    return "\n\n".join(f"[[ ## {field.name} ## ]]\n{_format_value(field.info, value)}"
                       for field, value in fields_with_values.items()).strip()


class _PerSignature:
    """Values computed from a signature class, kept as long as the class lives."""

    def __init__(self) -> None:
        self._values: weakref.WeakKeyDictionary[type, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, signature: type, compute: Any) -> Any:
        try:
            return self._values[signature]
        except (KeyError, TypeError):  # TypeError: not weak-referenceable, never the case for a class
            pass
        value = compute(signature)
        try:
            with self._lock:
                self._values[signature] = value
        except TypeError:
            pass
        return value


class _Cached:
    """What :class:`ChatAdapter` and :class:`JSONAdapter` add to DSPy's adapters."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._system = _PerSignature()
        self._requirements = _PerSignature()

    def format_system_message(self, signature: type[dspy.Signature]) -> str:
        return self._system.get(signature, super().format_system_message)

    def user_message_output_requirements(self, signature: type[dspy.Signature]) -> str | None:
        return self._requirements.get(signature, super().user_message_output_requirements)

    def format_user_message_content(self, signature: type[dspy.Signature], inputs: dict[str, Any], prefix: str = "",
                                    suffix: str = "", main_request: bool = False) -> str:
        # DSPy's ChatAdapter.format_user_message_content, with the string fast path.
        messages = [prefix]
        for name, field_info in signature.input_fields.items():
            if name in inputs:
                messages.append(f"[[ ## {name} ## ]]\n{_format_value(field_info, inputs.get(name))}")
        if main_request:
            requirements = self.user_message_output_requirements(signature)
            if requirements is not None:
                messages.append(requirements)
        messages.append(suffix)
        return "\n\n".join(messages).strip()


class ChatAdapter(_Cached, dspy.ChatAdapter):
    """``dspy.ChatAdapter`` with per-signature caching (see the module docstring)."""

    def format_field_with_value(self, fields_with_values: dict[Any, Any]) -> str:
        return _format_fields(fields_with_values)


class JSONAdapter(_Cached, dspy.JSONAdapter):
    """``dspy.JSONAdapter`` with per-signature caching, the response format's model included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._formats = _PerSignature()

    def _response_format(self, signature: type[dspy.Signature]) -> Any:
        try:
            return _dspy_json._get_structured_outputs_response_format(signature, self.use_native_function_calling)
        except (ValueError, pydantic.PydanticInvalidForJsonSchema, pydantic.PydanticSchemaGenerationError):
            _dspy_json.logger.warning("Failed to build structured output schema; using JSON mode before execution.")
            return {"type": "json_object"}

    def _prepare_response_format(self, lm: Any, lm_kwargs: dict[str, Any], signature: type[dspy.Signature]) -> None:
        # DSPy's JSONAdapter._prepare_response_format, with the schema model built once per signature.
        if "response_format" not in lm.supported_params:
            return
        has_tool_calls = any(field.annotation == _dspy_json.ToolCalls for field in signature.output_fields.values())
        if (_dspy_json._has_open_ended_mapping(signature) or (not self.use_native_function_calling and has_tool_calls)
                or not lm.supports_response_schema):
            lm_kwargs["response_format"] = {"type": "json_object"}
            return
        lm_kwargs["response_format"] = self._formats.get(signature, self._response_format)

    def format_field_with_value(self, fields_with_values: dict[Any, Any], role: str = "user") -> str:
        if role == "user":
            return _format_fields(fields_with_values)
        values = {field.name: value for field, value in fields_with_values.items()}
        if all(type(value) is str for value in values.values()):
            return json.dumps(values, indent=2, ensure_ascii=False)
        return super().format_field_with_value(fields_with_values, role)

