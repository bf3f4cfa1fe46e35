"""Template messages: the only thing WhatsApp delivers outside the 24-hour window.

Meta's Cloud API ("Send message templates"): `{"type": "template", "template": {"name",
"language": {"code"}, "components": [{"type": "body", "parameters": [{"type": "text",
"text"}, ...]}]}}`. The template must be approved in the business account for that name and
language; its body's `{{1}}`, `{{2}}`, ... take the parameters in order. We send body text
parameters only (what an operator can type); header media and buttons need the template's
own shape and are out of scope.

Checked here, before anything is queued, so an operator gets the error at once instead of
a failed message later: the name as Meta allows it (lowercase letters, digits and
underscores, at most 512), a language code (`es`, `en_US`, `pt_BR`), and parameters Meta
accepts (non-empty, no newline or tab, no more than four spaces in a row: error 132018).

The template itself, as the outbox, the journal and the history keep it, is
bridge/templates.py's `Template`: this module makes checked ones and gives the Graph API
its shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from bridge.errors import BridgeError
from bridge.templates import Template

NAME = re.compile(r"[a-z0-9_]{1,512}")
LANGUAGE = re.compile(r"[a-z]{2,3}(?:_[A-Za-z0-9]{2,4})?")
MAX_PARAMS = 64
MAX_PARAM = 1024  # a template body is at most 1024 characters with its parameters in it
FIELDS = frozenset({"name", "language", "params"})


class TemplateError(BridgeError):
    """A template request Meta would refuse, or that is malformed: the one line says why."""


def build_template(name: Any, language: Any, params: Sequence[Any] = ()) -> Template:
    """A checked template; TemplateError saying what is wrong."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise TemplateError(
            f"template name {name!r}: use the approved template's name (lowercase "
            "letters, digits and underscores)"
        )
    if not isinstance(language, str) or not LANGUAGE.fullmatch(language):
        raise TemplateError(
            f"template language {language!r}: use the code the template was approved "
            "in, like es, en_US or pt_BR"
        )
    if isinstance(params, str | bytes) or not isinstance(params, Sequence):
        raise TemplateError("template params must be a list of strings")
    if len(params) > MAX_PARAMS:
        raise TemplateError(f"a template takes at most {MAX_PARAMS} parameters")
    for n, param in enumerate(params, 1):
        _check_param(n, param)
    return Template(name, language, tuple(params))


def template_from_json(data: Any) -> Template:
    """The API's and the control channel's `{"name", "language", "params"?}`; any other
    field is an error (a typo like `"lang"` must not send the wrong thing)."""
    if not isinstance(data, Mapping):
        raise TemplateError('template must be an object {"name", "language", "params"}')
    unknown = sorted(str(k) for k in data if k not in FIELDS)
    if unknown:
        raise TemplateError(
            f"unknown template field(s) {', '.join(map(repr, unknown))}: "
            "a template has name, language and params"
        )
    if "name" not in data or "language" not in data:
        missing = [f for f in ("name", "language") if f not in data]
        raise TemplateError(f"template needs {' and '.join(missing)}")
    params = data.get("params")
    return build_template(data["name"], data["language"], () if params is None else params)


def template_to_graph(template: Template) -> dict[str, Any]:
    """The `template` object of the Cloud API message."""
    out: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
    if template.params:
        parameters = [{"type": "text", "text": p} for p in template.params]
        out["components"] = [{"type": "body", "parameters": parameters}]
    return out


def _check_param(n: int, param: Any) -> None:
    if not isinstance(param, str):
        raise TemplateError(f"template parameter {n} must be a string")
    try:
        param.encode("utf-8")
    except UnicodeEncodeError:
        raise TemplateError(f"template parameter {n} is not valid UTF-8 text") from None
    if not param.strip():
        raise TemplateError(f"template parameter {n} is empty (Meta refuses empty ones)")
    if len(param) > MAX_PARAM:
        raise TemplateError(f"template parameter {n} is longer than {MAX_PARAM} characters")
    if "\n" in param or "\t" in param or "     " in param:
        # Meta's error 132018: new-line/tab characters or more than 4 consecutive spaces.
        raise TemplateError(
            f"template parameter {n} has a newline, a tab or more than 4 spaces in a row, "
            "which WhatsApp refuses in template parameters"
        )
