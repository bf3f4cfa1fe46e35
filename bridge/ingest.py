"""Record a profile's part of a delivery exactly once: dedupe by wamid, commit, then acknowledge.

Meta delivers at least once: it retries a delivery that got no 200 and can deliver the same
message twice, even concurrently. A message id is "taken" synchronously (no await between the
check and the claim), so of two concurrent copies one commits and the other waits for that
commit's outcome: both are acknowledged only if the message is durable, and both fail (503)
if it is not, so Meta redelivers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from bridge.conversations import ConversationMode, Message
from bridge.errors import StorageError
from bridge.identities import LinkResolver
from bridge.keywords import KeywordHit, KeywordRules
from bridge.records import IdentityLinked, MessageAdded, OutboxConfirmed, Record, StatusChanged
from bridge.state import State
from bridge.store.base import Store
from bridge.whatsapp.models import InboundMessage, StatusUpdate
from bridge.whatsapp.sender import parse_part_tag


@dataclass(frozen=True, slots=True)
class IngestResult:
    # New messages, now durable and in memory; `key` is the conversation each went to (a
    # user id linked to a phone goes to the phone's).
    recorded: tuple[InboundMessage, ...]
    duplicates: int
    status_names: tuple[str, ...]  # the states reported by status webhooks
    # Keywords among the recorded messages that changed their conversation's mode (their
    # reaction committed with them): not for the assistant to answer.
    keyword_hits: tuple[KeywordHit, ...] = ()

    @property
    def statuses(self) -> int:
        return len(self.status_names)


class Ingestor:
    """Turns parsed messages and statuses into committed records for one profile."""

    def __init__(
        self,
        store: Store,
        observe_commit: Callable[[float], None] | None = None,
        keywords: KeywordRules | None = None,
    ) -> None:
        self._store = store
        self._observe_commit = observe_commit
        # wamid -> outcome of the commit that is recording it right now
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        self._links = LinkResolver()
        self._keywords = keywords

    async def ingest(
        self, messages: Sequence[InboundMessage], statuses: Sequence[StatusUpdate]
    ) -> IngestResult:
        """Commit what is new; returns only once it is durable (StorageError otherwise)."""
        state = self._store.state
        fresh: list[InboundMessage] = []
        waits: list[asyncio.Future[None]] = []
        claimed: set[str] = set()
        for message in messages:
            if state.has_seen(message.id) or message.id in claimed:
                continue
            pending = self._in_flight.get(message.id)
            if pending is not None:
                waits.append(pending)
                continue
            claimed.add(message.id)
            fresh.append(message)
        # Keys are resolved and the records built with no await before the commit takes its
        # sequence numbers: journal order is then the order links were seen in.
        received_ms = int(time.time() * 1000)
        records: list[Record] = []
        links: dict[IdentityLinked, None] = {}
        hits: list[KeywordHit] = []
        modes: dict[str, ConversationMode | None] = {}  # set by keywords of this batch
        for index, message in enumerate(fresh):
            key, link = self._links.resolve(message, state.aliases)
            if link is not None and link not in links:
                links[link] = None
                records.append(link)  # before the message: it moves the user id's history
            if key != message.key:
                fresh[index] = message = replace(message, key=key)
            records.append(_message_record(message, received_ms))
            moved_to = new_number(message)
            if moved_to is not None and moved_to != key:
                # The user changed their number: their conversation moves to the new one
                # (history kept) and the old key points to it from now on.
                records.append(IdentityLinked(key, moved_to))
            if self._keywords is not None:
                reaction, hit = self._keywords.react(message, received_ms, state, modes)
                records.extend(reaction)
                if hit is not None:
                    hits.append(hit)
        records.extend(StatusChanged(s.message_id, s.status, s.error) for s in statuses)
        records.extend(confirmations(statuses, state))
        dropped: frozenset[str] = frozenset()
        if fresh:
            dropped = await self._commit_claimed(records, fresh, links)
        elif records:  # statuses only: nothing claimed that a concurrent copy could wait for
            # A status that changes nothing needs no journal record: one for a message we
            # do not hold (erased, or not sent by this store), or a redelivered or late one
            # (Meta delivers at least once and in no guaranteed order).
            await self._commit(records, effective_only=True)
        if dropped:
            fresh = [m for m in fresh if m.id not in dropped]
            hits = [h for h in hits if h.message_id not in dropped]
        for other in waits:
            # Another request is committing this message: answer only once it is durable.
            await asyncio.shield(other)
        return IngestResult(
            recorded=tuple(fresh),
            duplicates=len(messages) - len(fresh),
            status_names=tuple(s.status for s in statuses),
            keyword_hits=tuple(hits),
        )

    async def _commit_claimed(
        self,
        records: list[Record],
        fresh: list[InboundMessage],
        links: dict[IdentityLinked, None],
    ) -> frozenset[str]:
        """Commit records that record the claimed `fresh` messages: concurrent copies of them
        wait for this outcome. Returns the ids another replica recorded first (left out)."""
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for message in fresh:
            self._in_flight[message.id] = outcome
        try:
            dropped = await self._commit(records)
        except BaseException as exc:
            outcome.set_exception(
                exc if isinstance(exc, StorageError) else StorageError("commit failed")
            )
            # Waiters (concurrent copies) see the failure; if nobody waits, mark it retrieved.
            outcome.exception()
            raise
        else:
            outcome.set_result(None)
        finally:
            for message in fresh:
                self._in_flight.pop(message.id, None)
            self._links.settle(links)
        return dropped

    async def _commit(self, records: list[Record], effective_only: bool = False) -> frozenset[str]:
        """Commit; the ids of messages another replica recorded meanwhile (PostgresStore)
        are left out of it and returned, so this one neither answers nor counts them. With
        `effective_only` (statuses only), records that change nothing are left out."""
        started = time.monotonic()
        dropped: frozenset[str] = frozenset()
        if effective_only:
            if not await self._store.commit_effective(records):
                return dropped  # nothing written: not a commit whose latency to observe
        else:
            dropped = await self._store.commit_new(records)
        if self._observe_commit:
            self._observe_commit(time.monotonic() - started)
        return dropped


def confirmations(statuses: Sequence[StatusUpdate], state: State) -> list[OutboxConfirmed]:
    """A record for each status that confirms a part of a reply still queued (its callback
    data names the part), so the confirmation is shared state, durable before the 200:
    the status may reach a replica other than the one that sent (and died), and Meta does
    not send it again after a crash. A reply this replica does not know at all may be one
    another replica queued moments ago: confirmed all the same (applying it checks the
    queue). A reply known and no longer queued (the usual case, and every `delivered` and
    `read`) needs nothing."""
    found: dict[tuple[str, int], OutboxConfirmed] = {}
    for status in statuses:
        parsed = parse_part_tag(status.callback_data) if status.callback_data else None
        if parsed is None:
            continue
        item_id, part = parsed
        if item_id not in state.outbox and item_id in state.replies:
            continue
        if state.confirmed.get(item_id, {}).get(part) == status.message_id:
            continue  # a redelivery, or the part's `delivered` after its `sent`
        found.setdefault(parsed, OutboxConfirmed(item_id, part, status.message_id))
    return list(found.values())


def new_number(message: InboundMessage) -> str | None:
    """The new wa_id of a `user_changed_number` system message, else None."""
    if message.type != "system" or not message.extra:
        return None
    system = message.extra.get("system")
    if not isinstance(system, Mapping) or system.get("type") != "user_changed_number":
        return None
    new = system.get("new_wa_id") or system.get("wa_id")
    return new if isinstance(new, str) and new.isdigit() else None


def _message_record(message: InboundMessage, received_ms: int) -> MessageAdded:
    return MessageAdded(
        key=message.key,
        message=Message(
            role="user",
            content=message.content,
            timestamp=message.timestamp_ms,
            id=message.id,
            type=message.type,
            extra=message.extra,
        ),
        contact_name=message.contact_name,
        received_ms=received_ms,
    )
