"""A template message as the bridge keeps it: its name, language and body parameters.

The outbox record, the snapshot and the history hold it in this form; what Meta accepts and
the Cloud API's shape of it are WhatsApp's business (bridge/whatsapp/template.py), so the
records layer needs nothing from the WhatsApp layer. A stored template is loaded as it was
written (types checked, not today's rules): checks belong before queuing, not at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Template:
    """An approved template to send, with its body's text parameters in order. Checked
    instances come from bridge/whatsapp/template.py (`build_template`, `template_from_json`)."""

    name: str
    language: str  # Meta's language (and locale) code: es, en_US, pt_BR
    params: tuple[str, ...] = ()

    @classmethod
    def from_stored(cls, data: Any) -> Template:
        """A template as `to_dict` wrote it (journal, snapshot): only the types are checked,
        so a stored template loads even if a later version checks new ones more strictly.
        ValueError when malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("stored template is not an object")
        name, language, params = data.get("name"), data.get("language"), data.get("params", [])
        if (
            type(name) is not str
            or type(language) is not str
            or type(params) is not list
            or not all(type(p) is str for p in params)
        ):
            raise ValueError("stored template: malformed name, language or params")
        return cls(name, language, tuple(params))

    def to_dict(self) -> dict[str, Any]:
        """How it is stored (journal, snapshot, the message's extra): from_stored reads it,
        and template_from_json (bridge/whatsapp/template.py) too."""
        return {"name": self.name, "language": self.language, "params": list(self.params)}

    def readable(self) -> str:
        """How it reads in the history: `[template pedido_listo] Ana | 1234`."""
        head = f"[template {self.name}]"
        return f"{head} {' | '.join(self.params)}" if self.params else head
