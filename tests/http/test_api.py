"""The operators' HTTP API against a real `bridge serve` and a local fake Graph API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from bridge import simulate
from tests.conftest import APP_SECRET
from tests.http.support import ANA, API_TOKEN, admin, live_bridge
from tests.load import post_signed_sync

BEN = "34600000002"
CONV = "/api/v1/profiles/default/conversations"
ROUTES = [
    ("GET", "/api/v1/profiles"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", CONV),
    ("GET", f"{CONV}/{ANA}"),
    ("DELETE", f"{CONV}/{ANA}"),
    ("POST", f"{CONV}/{ANA}/pause"),
    ("POST", f"{CONV}/{ANA}/resume"),
    ("POST", f"{CONV}/{ANA}/messages"),
    ("GET", "/api/v1/nothing-here"),
]


def test_without_a_token_configured_the_api_and_console_do_not_exist(tmp_path: Path) -> None:
    with live_bridge(tmp_path, api_token=None) as live:
        for method, path in [*ROUTES, ("GET", "/api/"), ("GET", "/console")]:
            status, _ = live.request(method, path, token="anything")
            assert status == 404, (method, path)


def test_every_route_refuses_a_missing_or_wrong_token(tmp_path: Path) -> None:
    with live_bridge(tmp_path) as live:
        live.say("hola")
        wrong = "x" * len(API_TOKEN)
        for method, path in ROUTES:
            for token in (None, wrong, API_TOKEN + "x", API_TOKEN.upper()):
                status, body = live.request(method, path, {"text": "hi"}, token=token)
                assert status == 401, (method, path, token)
                assert body == {
                    "error": "missing or wrong API token (Authorization: Bearer <token>)"
                }
        # Nothing happened behind the refusals.
        assert live.conversation()["mode"] == "assistant"
        assert live.request("GET", "/api/v1/nothing-here")[0] == 404
        assert live.request("PUT", "/api/v1/profiles")[0] == 405


def test_pause_then_operator_message_then_resume_while_running(tmp_path: Path) -> None:
    with live_bridge(tmp_path, BRIDGE_HANDOFF_MINUTES="45") as live:
        live.say("hola", name="Ana")
        assert live.wait_sent(1) == ["Echo: hola"]
        status, paused = live.request(
            "POST", f"{CONV}/{ANA}/pause", {"reason": "big order", "operator": "ana"}
        )
        assert status == 200 and paused["mode"] == "paused" and paused["changed"] is True
        assert (paused["set"]["by"], paused["set"]["reason"]) == ("ana", "big order")
        live.say("¿hay alguien?")
        live.wait_logged("reply_skipped_mode")  # recorded, not answered
        view = live.conversation()
        assert [m["content"] for m in view["messages"]] == ["hola", "Echo: hola", "¿hay alguien?"]
        # An operator answers as a person: recorded, sent through the outbox.
        before = int(time.time() * 1000)
        status, sent = live.request(
            "POST", f"{CONV}/{ANA}/messages", {"text": "Hola, soy Ana.", "operator": "ana"}
        )
        assert status == 202 and sent["status"] == "pending"
        assert live.wait_sent(2)[-1] == "Hola, soy Ana."
        live.wait(lambda: live.conversation()["messages"][-1]["status"] == "sent", "status 'sent'")
        message = live.conversation()["messages"][-1]
        assert (message["id"], message["role"], message["extra"]) == (
            sent["id"],
            "assistant",
            {"operator": "ana"},
        )
        # The pause it started is handoff_minutes long, and the pause without an end that
        # was there before stays (the longer one).
        assert live.conversation()["set"].get("until") is None
        assert live.request("POST", f"{CONV}/{ANA}/resume", {"operator": "ana"})[0] == 200
        live.request("POST", f"{CONV}/{ANA}/messages", {"text": "¿Algo más?", "operator": "ana"})
        live.wait_sent(3)
        until = live.conversation()["set"]["until"]
        assert before + 45 * 60_000 <= until <= int(time.time() * 1000) + 45 * 60_000
        status, resumed = live.request("POST", f"{CONV}/{ANA}/resume", {})
        assert status == 200 and resumed["mode"] == "assistant"
        assert resumed["set"]["by"] == "api"
        live.say("no, gracias")
        assert live.wait_sent(4)[-1] == "Echo: no, gracias"
        assert live.graph.bodies() == [
            "Echo: hola",
            "Hola, soy Ana.",
            "¿Algo más?",
            "Echo: no, gracias",
        ]


def test_a_short_pause_ends_by_itself(tmp_path: Path) -> None:
    with live_bridge(tmp_path) as live:
        live.say("hola")
        live.wait_sent(1)
        status, body = live.request("POST", f"{CONV}/{ANA}/pause", {"minutes": 0.05})  # 3 s
        assert status == 200
        until = body["set"]["until"]
        live.say("uno")
        live.wait_logged("reply_skipped_mode")
        assert live.conversation()["mode"] == "paused"
        live.wait(lambda: live.conversation()["mode"] == "assistant", "the pause to end", 10)
        assert int(time.time() * 1000) >= until
        live.say("dos")
        assert live.wait_sent(2) == ["Echo: hola", "Echo: uno / dos"]


def test_conversations_page_by_cursor_and_filter_by_mode_and_time(tmp_path: Path) -> None:
    with live_bridge(tmp_path) as live:
        phones = [f"3460000{n:04d}" for n in range(7)]
        for phone in phones:
            message = simulate.text_message("hola", phone)
            raw = simulate.encode(simulate.delivery(simulate.change_value([message])))
            assert post_signed_sync(live.port, raw, APP_SECRET) == 200
        live.wait_sent(7)
        seen: list[str] = []
        pages = 0
        cursor = ""
        while True:
            status, page = live.request("GET", f"{CONV}?limit=3{cursor}")
            assert status == 200
            seen += [c["key"] for c in page["conversations"]]
            pages += 1
            if page["next_cursor"] is None:
                break
            cursor = f"&cursor={page['next_cursor']}"
        assert pages == 3 and sorted(seen) == phones and len(seen) == 7
        status, first = live.request("GET", f"{CONV}?limit=7")
        order = [(c["last_activity"], c["key"]) for c in first["conversations"]]
        assert order == sorted(order, key=lambda t: (-t[0], t[1]))
        summary = first["conversations"][0]
        assert summary["phone"] == summary["key"][:3] + "*****" + summary["key"][-3:]
        assert summary["window"]["open"] is True and summary["message_count"] == 2
        for phone in phones[:2]:
            live.request("POST", f"{CONV}/{phone}/pause", {})
        status, paused = live.request("GET", f"{CONV}?mode=paused")
        assert sorted(c["key"] for c in paused["conversations"]) == phones[:2]
        future = int(time.time() * 1000) + 60_000
        assert live.request("GET", f"{CONV}?since={future}")[1]["conversations"] == []
        assert len(live.request("GET", f"{CONV}?since=2020-01-01")[1]["conversations"]) == 7
        for query in ("limit=0", "limit=x", "mode=asleep", "cursor=%%%", "since=yesterday"):
            status, body = live.request("GET", f"{CONV}?{query}")
            assert status == 400 and "error" in body, query


def test_errors_are_json_with_the_right_status(tmp_path: Path) -> None:
    with live_bridge(tmp_path) as live:
        live.say("hola")
        cases: list[tuple[str, str, Any, int]] = [
            ("GET", "/api/v1/profiles/nope/conversations", None, 404),
            ("GET", f"{CONV}/34699999999", None, 404),
            ("POST", f"{CONV}/34699999999/pause", {}, 404),
            ("POST", f"{CONV}/{ANA}/messages", {}, 400),
            ("POST", f"{CONV}/{ANA}/messages", {"text": "   "}, 400),
            ("POST", f"{CONV}/{ANA}/messages", {"text": 5}, 400),
            ("POST", f"{CONV}/{ANA}/messages", {"text": "x" * 20_000}, 400),
            ("POST", f"{CONV}/{ANA}/pause", {"minutes": -1}, 400),
            ("POST", f"{CONV}/{ANA}/pause", {"minutes": True}, 400),
            ("POST", f"{CONV}/{ANA}/pause", ["not", "an", "object"], 400),
            ("POST", f"{CONV}/{ANA}/pause", {"operator": "x" * 65}, 400),
        ]
        for method, path, body, expected in cases:
            status, answer = live.request(method, path, body)
            assert status == expected and set(answer) == {"error"}, (path, body, answer)
        status, answer = live.request("POST", f"{CONV}/{ANA}/pause", raw=b"{not json")
        assert (status, answer) == (400, {"error": "the body is not JSON"})
        status, answer = live.request(
            "POST", f"{CONV}/{ANA}/messages", raw=orjson.dumps({"text": "x" * 70_000})
        )
        assert status == 413
        # A phone as people type it names the same conversation.
        assert live.request("GET", f"{CONV}/%2B34%20600-000-001")[1]["key"] == ANA


def test_a_send_repeated_with_its_idempotency_key_is_queued_once(tmp_path: Path) -> None:
    with live_bridge(tmp_path) as live:
        live.say("hola", name="Ana")
        assert live.wait_sent(1) == ["Echo: hola"]
        path, body = f"{CONV}/{ANA}/messages", {"text": "Soy Ana.", "operator": "ana"}
        key = {"Idempotency-Key": "3f0c2a4e-send-1"}
        first = live.request("POST", path, body, headers=key)
        again = live.request("POST", path, body, headers=key)  # the answer was lost, say
        assert first[0] == again[0] == 202 and first[1]["id"] == again[1]["id"]
        other = live.request("POST", path, body, headers={"Idempotency-Key": "3f0c2a4e-send-2"})
        assert other[0] == 202 and other[1]["id"] != first[1]["id"]
        assert live.wait_sent(3)[1:] == ["Soy Ana.", "Soy Ana."]
        contents = [m["content"] for m in live.conversation()["messages"]]
        assert contents == ["hola", "Echo: hola", "Soy Ana.", "Soy Ana."]
        status, refused = live.request("POST", path, body, headers={"Idempotency-Key": "x" * 256})
        assert status == 400 and "Idempotency-Key" in refused["error"]
        live.say("hola", sender=BEN)
        status, refused = live.request("POST", f"{CONV}/{BEN}/messages", body, headers=key)
        assert status == 400 and "another conversation" in refused["error"]


def test_a_closed_window_refuses_an_operator_message_with_409(tmp_path: Path) -> None:
    with live_bridge(tmp_path, start=False) as live:
        old = int(time.time() * 1000) - 30 * 3600 * 1000
        seed = tmp_path / "old.json"
        seed.write_bytes(
            orjson.dumps(
                [[ANA, {"messages": [{"role": "user", "content": "hola", "timestamp": old}]}]]
            )
        )
        assert admin(live.env, "profiles", "create", "default").returncode == 0
        result = admin(live.env, "import", str(seed))
        assert result.returncode == 0, result.stderr
        live.start()
        status, body = live.request("POST", f"{CONV}/{ANA}/messages", {"text": "¿sigues ahí?"})
        assert status == 409 and "24-hour window" in body["error"]
        assert live.conversation()["window"] == {"open": False, "closes_at": old + 86_400_000}
        assert [m["content"] for m in live.conversation()["messages"]] == ["hola"]


def test_delete_erases_the_conversation_durably(tmp_path: Path) -> None:
    with live_bridge(tmp_path) as live:
        live.say("hola")
        live.say("hola", sender=BEN)
        live.wait_sent(2)
        status, body = live.request("DELETE", f"{CONV}/{ANA}")
        assert (status, body) == (200, {"key": ANA, "deleted": True, "messages": 2})
        assert live.request("GET", f"{CONV}/{ANA}")[0] == 404
        live.kill()
        assert ANA not in live.stored().conversations
        assert BEN in live.stored().conversations


def test_openapi_describes_every_route(tmp_path: Path) -> None:
    with live_bridge(tmp_path) as live:
        status, doc = live.request("GET", "/api/v1/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.")
        described = {
            (method.upper(), path)
            for path, item in doc["paths"].items()
            for method in item
            if method != "parameters"
        }
        template = "/api/v1/profiles/{slug}/conversations"
        for method, path in ROUTES[:-1]:
            path = path.replace("/default/", "/{slug}/").replace("/default", "/{slug}")
            path = path.replace(f"/{ANA}", "/{key}")
            assert (method, path) in described, (method, path)
        assert ("GET", template) in described


def test_modes_survive_kill_9_and_restart(tmp_path: Path) -> None:
    carla = "34600000003"
    with live_bridge(tmp_path, BRIDGE_OPT_OUT_REPLY="Hecho, no te escribiremos más.") as live:
        live.say("hola")
        live.say("hola", sender=BEN)
        live.wait_sent(2)
        live.request("POST", f"{CONV}/{ANA}/pause", {"operator": "ana", "reason": "queja"})
        live.say("  stop ", sender=BEN)  # opt-out keyword, any case and spacing
        live.say("hola", sender=carla)
        live.wait_sent(4)
        live.request("POST", f"{CONV}/{carla}/messages", {"text": "Soy Ana", "operator": "ana"})
        live.wait_sent(5)
        before = {k: live.conversation(k)["set"] for k in (ANA, BEN, carla)}
        live.kill()  # SIGKILL: no snapshot; the journal has it all
        live.start()
        after = {k: live.conversation(k)["set"] for k in (ANA, BEN, carla)}
        assert after == before
        assert [after[k]["mode"] for k in (ANA, BEN, carla)] == ["paused", "opted_out", "paused"]
        assert after[BEN] == {**after[BEN], "by": "user", "reason": "opted out by keyword"}
        # After the restart, still recorded and not answered.
        live.say("¿seguís ahí?")
        live.say("¿hola?", sender=BEN)
        # Each was turned away where a reply starts: none can follow.
        live.wait_logged("reply_skipped_mode", count=2)
        assert live.graph.bodies() == [
            "Echo: hola",
            "Echo: hola",
            "Hecho, no te escribiremos más.",
            "Echo: hola",
            "Soy Ana",
        ]
        assert live.stop() == 0


def test_sessions_admin_goes_through_a_running_bridge_and_works_on_a_stopped_one(
    tmp_path: Path,
) -> None:
    with live_bridge(tmp_path) as live:
        live.say("hola")
        live.wait_sent(1)
        # While it runs: through its control socket; the bridge sends at once.
        result = admin(live.env, "pause", ANA, "--as", "ana", "--json")
        assert result.returncode == 0, result.stderr
        assert orjson.loads(result.stdout)["mode"] == "paused"
        assert live.conversation()["mode"] == "paused"
        result = admin(live.env, "send", ANA, "Hola, soy Ana", "--as", "ana")
        assert result.returncode == 0, result.stderr
        assert "the bridge sends it now" in result.stdout
        assert live.wait_sent(2)[-1] == "Hola, soy Ana"
        result = admin(live.env, "resume", ANA, "--json")
        assert result.returncode == 0 and orjson.loads(result.stdout)["mode"] == "assistant"
        assert live.stop() == 0
        result = admin(live.env, "pause", "+34 600 000 001", "--for", "90m", "--as", "ana")
        assert result.returncode == 0, result.stderr
        assert "paused until" in result.stdout
        result = admin(live.env, "send", ANA, "Te escribo yo, Ana.", "--as", "ana", "--json")
        assert result.returncode == 0, result.stderr
        sent = orjson.loads(result.stdout)
        conv = live.stored().conversations[ANA]
        assert conv.mode is not None and conv.mode.by == "ana"
        assert conv.mode.until_ms is not None
        assert conv.mode.until_ms - int(time.time() * 1000) > 85 * 60_000  # the longer pause
        assert conv.messages[-1].extra == {"operator": "ana"}
        live.start()  # the queued message goes out now
        assert live.wait_sent(3)[-1] == "Te escribo yo, Ana."
        assert live.conversation()["messages"][-1]["id"] == sent["id"]
        live.say("gracias")
        live.wait_logged("reply_skipped_mode")
        assert live.stop() == 0
        result = admin(live.env, "resume", ANA, "--json")
        assert result.returncode == 0 and orjson.loads(result.stdout)["mode"] == "assistant"
        result = admin(live.env, "pause", ANA, "--for", "soon")
        assert result.returncode == 2 and "--for" in result.stderr


def test_a_cli_pause_for_a_few_seconds_ends_by_itself_in_the_running_bridge(
    tmp_path: Path,
) -> None:
    with live_bridge(tmp_path) as live:
        live.say("hola")
        live.wait_sent(1)
        assert live.stop() == 0
        result = admin(live.env, "pause", ANA, "--for", "4s", "--json")
        assert result.returncode == 0, result.stderr
        until = orjson.loads(result.stdout)["set"]["until"]
        live.start()
        live.wait(lambda: live.conversation()["mode"] == "assistant", "the pause to end", 15)
        assert int(time.time() * 1000) >= until
        live.say("¿ya?")
        assert live.wait_sent(2)[-1] == "Echo: ¿ya?"


def test_what_came_in_during_a_pause_is_not_answered_after_a_restart(tmp_path: Path) -> None:
    with live_bridge(tmp_path) as live:
        live.say("hola")
        live.wait_sent(1)
        live.request("POST", f"{CONV}/{ANA}/pause", {})
        live.say("¿me llamáis?")
        live.wait_logged("reply_skipped_mode")
        live.request("POST", f"{CONV}/{ANA}/resume", {})
        live.kill()
        live.start()  # the person handled "¿me llamáis?": not owed by the assistant
        loaded = [e for e in live.events() if e.get("event") == "profile_loaded"]
        assert loaded[-1]["replies_resumed"] == 0
        live.say("gracias")
        assert live.wait_sent(2) == ["Echo: hola", "Echo: ¿me llamáis? / gracias"]
