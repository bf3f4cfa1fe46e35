"""Template messages after the 24-hour window, through a real `bridge serve`: its control
socket (`sessions-admin send --template`) and its HTTP API, with a fake Graph API that checks
the template body as Meta does."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from tests.http.support import ANA, Live, admin, live_bridge

CONV = "/api/v1/profiles/default/conversations"
HOUR_MS = 3600 * 1000
APPROVED = {("pedido_listo", "es"): 2, ("seguimos_aqui", "en_US"): 0}
PEDIDO = {
    "name": "pedido_listo",
    "language": {"code": "es"},
    "components": [
        {
            "type": "body",
            "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "1234"}],
        }
    ],
}


def import_old_conversation(live: Live, tmp_path: Path, hours: int = 25) -> int:
    """Ana's conversation whose last message is `hours` old (imported: the bridge received
    nothing from her since); the time of that message."""
    old = int(time.time() * 1000) - hours * HOUR_MS
    seed = tmp_path / "old.json"
    seed.write_bytes(
        orjson.dumps([[ANA, {"messages": [{"role": "user", "content": "hola", "timestamp": old}]}]])
    )
    assert admin(live.env, "profiles", "create", "default").returncode == 0
    result = admin(live.env, "import", str(seed))
    assert result.returncode == 0, result.stderr
    return old


def contents(live: Live) -> list[str]:
    return [m["content"] for m in live.conversation()["messages"]]


def test_after_the_window_text_is_refused_and_a_template_goes_out(tmp_path: Path) -> None:
    with live_bridge(tmp_path, start=False) as live:
        live.graph.templates = dict(APPROVED)
        import_old_conversation(live, tmp_path)
        live.start()
        # Free text: refused before Meta is asked, pointing at templates; nothing written.
        result = admin(live.env, "send", ANA, "¿sigues ahí?", "--as", "ana")
        assert result.returncode == 1
        assert "24-hour window" in result.stderr and "--template" in result.stderr
        assert "Traceback" not in result.stderr
        status, body = live.request("POST", f"{CONV}/{ANA}/messages", {"text": "¿sigues ahí?"})
        assert status == 409 and "template" in body["error"]
        assert contents(live) == ["hola"]
        # A template through the running bridge's control socket: sent at once.
        result = admin(
            live.env, "send", ANA, "--template", "pedido_listo", "--lang", "es",
            "--param", "Ana", "--param", "1234", "--as", "ana",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "the bridge sends it now" in result.stdout
        live.wait(lambda: len(live.graph.templates_sent()) == 1, "the template sent")
        assert live.graph.templates_sent(ANA) == [PEDIDO]
        # And through the API.
        status, body = live.request(
            "POST",
            f"{CONV}/{ANA}/messages",
            {"template": {"name": "seguimos_aqui", "language": "en_US"}, "operator": "ben"},
        )
        assert status == 202, body
        live.wait(lambda: len(live.graph.templates_sent()) == 2, "the second template sent")
        assert live.graph.templates_sent()[1] == {
            "name": "seguimos_aqui",
            "language": {"code": "en_US"},
        }
        assert live.graph.bodies() == []  # no free text ever reached Meta
        live.wait(
            lambda: (
                [m.get("status") for m in live.conversation()["messages"]][1:] == ["sent", "sent"]
            ),
            "both recorded as sent",
        )
        messages = live.conversation()["messages"]
        assert [m["content"] for m in messages] == [
            "hola",
            "[template pedido_listo] Ana | 1234",
            "[template seguimos_aqui]",
        ]
        assert messages[1]["role"] == "assistant"
        assert messages[1]["extra"] == {
            "operator": "ana",
            "template": {"name": "pedido_listo", "language": "es", "params": ["Ana", "1234"]},
        }
        assert messages[2]["extra"]["operator"] == "ben"
        assert live.stop() == 0


def test_a_template_meta_does_not_know_is_recorded_as_failed(tmp_path: Path) -> None:
    with live_bridge(tmp_path, start=False) as live:
        live.graph.templates = dict(APPROVED)
        import_old_conversation(live, tmp_path)
        live.start()
        status, _ = live.request(
            "POST",
            f"{CONV}/{ANA}/messages",
            {"template": {"name": "pedido_listo", "language": "es", "params": ["Ana"]}},
        )
        assert status == 202
        live.wait(
            lambda: live.conversation()["messages"][-1].get("status") == "failed", "the failure"
        )
        assert live.conversation()["messages"][-1]["error"].startswith("132000: ")
        assert live.graph.sent == []


def test_bad_template_requests_get_a_clear_error_and_write_nothing(tmp_path: Path) -> None:
    with live_bridge(tmp_path, start=False) as live:
        import_old_conversation(live, tmp_path)
        live.start()
        for args, error in [
            (["--template", "pedido_listo"], "--template needs --lang"),
            (["--lang", "es"], "--lang and --param go with --template"),
            ([], "needs the message TEXT, or --template"),
            (["hola", "--template", "pedido_listo", "--lang", "es"], "either a TEXT or"),
            (["--template", "Pedido Listo", "--lang", "es"], "template name"),
            (["--template", "pedido", "--lang", "es", "--param", "a\nb"], "newline"),
        ]:
            result = admin(live.env, "send", ANA, *args)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            assert error in result.stderr, (args, result.stderr)
            assert "Traceback" not in result.stderr
        for body, error in [
            ({"template": {"name": "pedido_listo", "lang": "es"}}, "unknown template field"),
            ({"template": {"name": "pedido_listo"}}, "template needs language"),
            ({"template": "pedido_listo"}, "must be an object"),
            ({"text": "hola", "priority": "high"}, "unknown field(s) 'priority'"),
            ({"text": "hola", "template": {"name": "x", "language": "es"}}, "not both"),
            ({"operator": "ana"}, 'missing "text"'),
        ]:
            status, answer = live.request("POST", f"{CONV}/{ANA}/messages", body)
            assert status == 400 and error in answer["error"], (body, status, answer)
        assert contents(live) == ["hola"]
        assert live.graph.requests == []
        assert live.stop() == 0


def test_a_queued_template_survives_kill_9_and_a_snapshot_and_goes_out_once(
    tmp_path: Path,
) -> None:
    with live_bridge(tmp_path, start=False, BRIDGE_SEND_RECONCILE_SECONDS="0.5") as live:
        import_old_conversation(live, tmp_path)
        live.graph.fail_all = (503, 131016)  # Meta is down: the template stays queued
        live.start()
        result = admin(
            live.env, "send", ANA, "--template", "pedido_listo", "--lang", "es",
            "--param", "Ana", "--param", "1234", "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        item = orjson.loads(result.stdout)["id"]
        live.wait_logged("reply_retry")
        live.kill()  # no snapshot: the journal alone has it
        queued = live.stored().outbox[item]
        assert queued.template is not None and queued.template.params == ("Ana", "1234")
        live.start()
        live.wait_logged("reply_retry")
        assert live.stop() == 0  # a clean stop writes a snapshot that holds it
        assert live.stored().outbox[item].template == queued.template
        # With no bridge running, sessions-admin queues one in the store itself.
        result = admin(live.env, "send", ANA, "--template", "seguimos_aqui", "--lang", "en_US")
        assert result.returncode == 0, result.stderr
        assert "sent when the bridge starts" in result.stdout
        live.graph.fail_all = None
        live.start()
        live.wait(lambda: len(live.graph.templates_sent()) == 2, "both templates sent")
        live.wait(
            lambda: (
                [m.get("status") for m in live.conversation()["messages"]][1:] == ["sent", "sent"]
            ),
            "both recorded as sent",
        )
        time.sleep(1)  # nothing else goes out
        assert live.graph.templates_sent() == [
            PEDIDO,
            {"name": "seguimos_aqui", "language": {"code": "en_US"}},
        ]
        assert live.stop() == 0
        assert live.stored().outbox == {}
