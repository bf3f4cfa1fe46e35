"""The OpenAPI 3.1 description of `/api/v1` (served at `/api/v1/openapi.json`)."""

from __future__ import annotations

from typing import Any

from bridge import __version__
from bridge.conversations import MODES


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "Bad request (a wrong field, an empty message)"),
    "401": _json(_ref("Error"), "Missing or wrong API token"),
    "404": _json(_ref("Error"), "No such profile or conversation"),
}

SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}
KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "The conversation: a phone number (digits; `+34 600 000 001` works too, "
    "URL-encoded) or a business-scoped user id",
    "schema": {"type": "string"},
}
OPERATOR = {
    "operator": {
        "type": "string",
        "maxLength": 64,
        "description": "Who does this (kept with the change; default `api`)",
    }
}
REASON = {"reason": {"type": "string", "maxLength": 500, "description": "Why (kept)"}}


def _body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"required": bool(required), "content": {"application/json": {"schema": schema}}}


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
    "Template": {
        "type": "object",
        "description": "An approved template message: recorded as `[template NAME] p1 | p2`",
        "additionalProperties": False,
        "required": ["name", "language"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9_]{1,512}$"},
            "language": {"type": "string", "description": "es, en_US, pt_BR, ..."},
            "params": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 1024},
                "description": "the body's {{1}}, {{2}}, ... in order",
            },
        },
    },
    "ModeChange": {
        "type": "object",
        "description": "The last change of a conversation's mode",
        "properties": {
            "mode": {"type": "string", "enum": list(MODES)},
            "at": {"type": "integer", "description": "ms since the epoch"},
            "by": {"type": "string", "description": "an operator's name, `cli`, `api`, `user`"},
            "reason": {"type": "string"},
            "until": {"type": "integer", "description": "a pause's end (ms)"},
        },
    },
    "Window": {
        "type": "object",
        "description": "WhatsApp's 24-hour customer service window",
        "properties": {
            "open": {"type": "boolean"},
            "closes_at": {"type": ["integer", "null"], "description": "ms; null: never opened"},
        },
    },
    "Summary": {
        "type": "object",
        "properties": {
            "key": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "phone": {"type": ["string", "null"], "description": "masked: 346*****001"},
            "mode": {"type": "string", "enum": list(MODES), "description": "in effect now"},
            "set": _ref("ModeChange"),
            "last_activity": {"type": "integer"},
            "last_user_message": {"type": ["integer", "null"]},
            "message_count": {"type": "integer"},
            "window": _ref("Window"),
            "last_message": {"type": ["object", "null"]},
        },
    },
    "Message": {
        "type": "object",
        "properties": {
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "content": {"type": "string"},
            "timestamp": {"type": "integer"},
            "id": {"type": "string"},
            "type": {"type": "string"},
            "status": {
                "type": "string",
                "description": "pending, sent, delivered, read, failed, cancelled, logged",
            },
            "error": {"type": "string"},
            "replyTo": {"type": "string"},
            "extra": {
                "type": "object",
                "description": "`operator`: who wrote an operator's message; `auto`: a "
                "keyword's automatic reply; structured fields of user messages",
            },
        },
    },
    "Conversation": {
        "allOf": [
            _ref("Summary"),
            {
                "type": "object",
                "properties": {
                    "messages": {"type": "array", "items": _ref("Message")},
                    "queued": {"type": "array", "items": {"type": "string"}},
                    "version": {"type": "integer", "description": "changes with any change"},
                },
            },
        ]
    },
    "ModeOutcome": {
        "type": "object",
        "properties": {
            "key": {"type": "string"},
            "changed": {"type": "boolean"},
            "mode": {"type": "string", "enum": list(MODES)},
            "set": _ref("ModeChange"),
        },
    },
}


def document() -> dict[str, Any]:
    conversation = "/api/v1/profiles/{slug}/conversations/{key}"
    mode_reply = {"200": _json(_ref("ModeOutcome"), "The conversation's mode now"), **ERRORS}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "whatsapp-bridge operators' API",
            "version": __version__,
            "description": "Humans in the loop: read conversations, pause and resume the "
            'assistant, answer as a person, erase. Errors are `{"error": "..."}`.',
        },
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "security": [{"token": []}],
        "paths": {
            "/api/v1/profiles": {
                "get": {
                    "summary": "The profiles this bridge serves, with counts",
                    "responses": {"200": _json({"type": "object"}, "Profiles"), **ERRORS},
                }
            },
            "/api/v1/profiles/{slug}/conversations": {
                "get": {
                    "summary": "Conversations, most recently active first",
                    "parameters": [
                        SLUG,
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                        {
                            "name": "since",
                            "in": "query",
                            "description": "active since: ms since the epoch or ISO 8601",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "mode",
                            "in": "query",
                            "schema": {"type": "string", "enum": list(MODES)},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "description": "`next_cursor` of the previous page",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "conversations": {"type": "array", "items": _ref("Summary")},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            },
                            "A page of conversations",
                        ),
                        **ERRORS,
                    },
                }
            },
            conversation: {
                "parameters": [SLUG, KEY],
                "get": {
                    "summary": "One conversation: messages, mode, window",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "description": "only the newest N messages",
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {"200": _json(_ref("Conversation"), "The conversation"), **ERRORS},
                },
                "delete": {
                    "summary": "Erase the conversation (history, mode, queued messages); journaled",
                    "requestBody": _body(OPERATOR),
                    "responses": {"200": _json({"type": "object"}, "Erased"), **ERRORS},
                },
            },
            conversation + "/pause": {
                "parameters": [SLUG, KEY],
                "post": {
                    "summary": "A person takes over: the assistant stops answering",
                    "requestBody": _body(
                        {
                            "minutes": {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "description": "resume by itself after this long; "
                                "absent: until resumed",
                            },
                            **REASON,
                            **OPERATOR,
                        }
                    ),
                    "responses": {
                        **mode_reply,
                        "409": _json(_ref("Error"), "The user opted out"),
                    },
                },
            },
            conversation + "/resume": {
                "parameters": [SLUG, KEY],
                "post": {
                    "summary": "The assistant answers again, from the next message on",
                    "requestBody": _body({**REASON, **OPERATOR}),
                    "responses": mode_reply,
                },
            },
            conversation + "/messages": {
                "parameters": [SLUG, KEY],
                "post": {
                    "summary": "Send a message as a person, or an approved template (allowed "
                    "after the 24-hour window); pauses the conversation for the profile's "
                    "handoff_minutes",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "description": "The same key again queues nothing and answers "
                            "as the first request did: retries are safe",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "text": {"type": "string", "maxLength": 16384},
                                        "template": _ref("Template"),
                                        **OPERATOR,
                                    },
                                    "oneOf": [{"required": ["text"]}, {"required": ["template"]}],
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "id": {"type": "string"},
                                    "status": {"type": "string"},
                                    "mode": {"type": "string"},
                                },
                            },
                            "Queued in the durable outbox; its state shows on the message",
                        ),
                        **ERRORS,
                        "409": _json(_ref("Error"), "The 24-hour window is closed"),
                    },
                },
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
    }
