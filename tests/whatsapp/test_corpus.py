"""The delivery corpus posted, signed, to a real `bridge serve`, then read back with
`sessions-admin`: every stored entry checked field by field (content, type, id, extra).

tests/whatsapp/corpus/*.json are Meta-shaped deliveries written for this project after Meta's
webhook reference and the public fixtures of pywa, whatsapp-api-js, netflie's
whatsapp-cloud-api and Chatwoot. Each file holds `delivery` (the body Meta would POST) and
`expect`: the HTTP status, the counts, the reasons of skipped parts, and the entries that must
be stored (`key`, `id`, `type`, `content`, `extra`, optionally the contact `name`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge import simulate
from tests.test_admin import admin, admin_json
from tests.test_cli import Served, clean_env, free_port, start_serve

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(CORPUS.glob("*.json"))
SECRET = "corpus-app-secret"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def post(served: Served, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    raw = simulate.encode(body)
    request = urllib.request.Request(
        f"http://127.0.0.1:{served.port}/webhook",
        data=raw,
        headers=simulate.signed_headers(raw, SECRET),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@dataclass
class CorpusRun:
    served: Served
    answers: dict[str, tuple[int, dict[str, Any]]]  # file name -> (HTTP status, JSON answer)
    store: dict[str, dict[str, Any]]  # `sessions-admin export`: key -> conversation


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusRun]:
    """One bridge; every corpus file posted once; the answers and the exported store."""
    var = tmp_path_factory.mktemp("corpus") / "var"
    env = clean_env(
        BRIDGE_PORT=str(free_port()),
        BRIDGE_VAR_DIR=str(var),
        BRIDGE_APP_SECRET=SECRET,
        BRIDGE_VERIFY_TOKEN="corpus-verify",
        BRIDGE_PHONE_NUMBER_ID="106540352242922",
        # The corpus has fixed timestamps: keep them clear of retention whatever today is.
        BRIDGE_RETENTION_DAYS="36500",
    )
    served = start_serve(var, env=env)
    answers = {path.name: post(served, load(path)["delivery"]) for path in CASES}
    exported = admin(["export"], env)
    assert exported.returncode == 0, exported.stderr
    store = {key: conv for key, conv in json.loads(exported.stdout)}
    yield CorpusRun(served, answers, store)
    if served.proc.poll() is None:
        served.proc.kill()
        served.proc.wait()


def test_corpus_covers_every_message_type() -> None:
    types = {e["type"] for p in CASES for e in load(p)["expect"]["entries"]}
    assert {
        "text",
        "image",
        "video",
        "document",
        "audio",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "button",
        "reaction",
        "order",
        "system",
        "unsupported",
        "edit",
        "revoke",
    } <= types
    assert len(CASES) >= 35


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_corpus_delivery_is_stored_field_by_field(corpus_run: CorpusRun, path: Path) -> None:
    expect = load(path)["expect"]
    status, answer = corpus_run.answers[path.name]
    assert status == expect["status"], answer
    if status == 200:
        assert answer["recorded"] == expect["recorded"]
        assert answer["duplicates"] == expect["duplicates"]
        assert answer.get("skipped", 0) == len(expect["skipped"])
    else:
        assert "error" in answer
    store = corpus_run.store
    for want in expect["entries"]:
        conv = store.get(want["key"])
        assert conv is not None, f"no conversation {want['key']}"
        stored = [m for m in conv["messages"] if m.get("id") == want["id"]]
        assert len(stored) == 1, f"{want['id']} stored {len(stored)} times"
        (got,) = stored
        assert got["role"] == "user"
        assert got["type"] == want["type"]
        assert got["content"] == want["content"]
        assert got.get("extra") == want["extra"]
        if "name" in want:
            assert conv["name"] == want["name"]


def test_skipped_parts_are_not_stored(corpus_run: CorpusRun) -> None:
    stored = {m.get("id") for conv in corpus_run.store.values() for m in conv["messages"]}
    for name in ("batch_nothing_usable.json", "batch_mixed.json"):
        delivery = load(CORPUS / name)["delivery"]
        sender_less = {
            m["id"]
            for c in delivery["entry"][0]["changes"]
            for m in c["value"]["messages"]
            if isinstance(m, dict) and "id" in m and "from" not in m
        }
        assert sender_less and not sender_less & stored


def test_show_json_carries_the_structured_fields(corpus_run: CorpusRun) -> None:
    served = corpus_run.served
    case = load(CORPUS / "interactive_list_reply.json")["expect"]["entries"][0]
    shown = admin_json(["show", case["key"]], served.env)
    (message,) = [m for m in shown["messages"] if m.get("id") == case["id"]]
    assert message["extra"]["reply"] == {
        "kind": "list_reply",
        "id": "slot_2030",
        "title": "Table for 2",
        "description": "Friday 20:30, terrace",
    }


def test_skipped_parts_are_counted_by_reason_in_metrics(corpus_run: CorpusRun) -> None:
    served = corpus_run.served
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'whatsapp_bridge_skipped_total{reason="no_sender",what="message"} 2.0' in text
    assert 'whatsapp_bridge_skipped_total{reason="no_metadata",what="change"} 1.0' in text
    assert 'whatsapp_bridge_skipped_total{reason="no_id",what="status"} 1.0' in text
