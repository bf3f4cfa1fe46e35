"""Free disk and store size per profile: /readyz marks a profile degraded when its disk runs
low, /metrics exposes both, and the event log records the change."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bridge.http.health import MONITOR
from bridge.ops.diskspace import LOW_BYTES, DiskSpace, dir_size, disk_space
from bridge.runtime import durable_store
from tests.conftest import StartBridge, make_profile
from tests.tmpfs import mounted_tmpfs


def test_low_means_under_a_gibibyte_or_a_tenth() -> None:
    gib = 1024**3
    assert DiskSpace(free=LOW_BYTES - 1, total=100 * gib).low  # 1 GiB on a large disk
    assert DiskSpace(free=9 * gib, total=100 * gib).low  # 9 %
    assert not DiskSpace(free=11 * gib, total=100 * gib).low
    assert "free of" in DiskSpace(free=11 * gib, total=100 * gib).describe()


async def test_readyz_marks_a_profile_on_a_small_disk_degraded_at_once(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    normal = make_profile(tmp_path, slug="normal")
    with mounted_tmpfs(tmp_path / "small", "64m") as small:  # < 1 GiB: low by definition
        tiny = make_profile(small, slug="tiny", phone_number_id="100000000000002")
        bridge = await start_bridge([normal, tiny], store_factory=durable_store)

        ready = await (await bridge.client.get("/readyz")).json()

        assert ready["status"] == "ready"  # degraded is reported, it does not stop deliveries
        profiles = ready["profiles"]
        assert profiles["tiny"]["health"]["status"] == "degraded"
        assert profiles["tiny"]["health"]["checks"]["disk"].startswith("low: ")
        assert profiles["normal"]["health"]["checks"]["disk"] == "ok"
        assert profiles["normal"]["health"]["status"] == "unknown"  # not checked yet

        await bridge.client.app[MONITOR].check_all()
        events = bridge.runtimes["tiny"].events.read()
        assert [(e["event"], e["status"], e["failing"]) for e in events[-1:]] == [
            ("health_changed", "degraded", ["disk"])
        ]
        await bridge.client.close()


async def test_metrics_expose_free_disk_and_store_bytes_per_profile(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bridge = await start_bridge(store_factory=durable_store)
    await bridge.post_text("hola")
    await bridge.client.app[MONITOR].check_all()  # measures the store's directory
    state_dir = bridge.runtimes["default"].config.state_dir

    resp = await bridge.client.get("/metrics")
    samples = {
        (s.name, s.labels.get("profile")): s.value
        for family in text_string_to_metric_families(await resp.text())
        for s in family.samples
    }

    space = disk_space(state_dir)
    free = samples[("whatsapp_bridge_disk_free_bytes", "default")]
    assert abs(free - space.free) < 64 * 1024**2  # the disk moves a little meanwhile
    assert samples[("whatsapp_bridge_disk_size_bytes", "default")] == space.total
    stored = samples[("whatsapp_bridge_store_bytes", "default")]
    assert 0 < stored <= dir_size(state_dir)  # as measured; the journal only grew since
