"""Aliases and tiers: a name such as `fast` that stands for an ordered list of real models, and `auto`, which picks
one of its tier aliases (fast, deep, code, writing) by what the prompt asks for (proxy/classify.py).

The rules, in one place (`resolve`):
- a real model wins: a name some host holds (in any state) is that model, even when an alias has the same name;
- otherwise an enabled alias of that name is walked in order: the first target with a usable host is served, and
  the targets after it are fallbacks when every host of the one before fails; a disabled alias is no alias at all;
- only `auto` lists aliases (its tiers): the classified tier first, then the others in auto's order. Any other
  alias's targets are always real model names, so there are no cycles.

Aliases are read from the database into an in-memory table like the API keys (proxy/keys.py), refreshed every
CLOOD_SNAPSHOT_REFRESH seconds and at once after an admin edit in this process; a request never queries for them.
"""

import asyncio
import threading
import time
from dataclasses import dataclass, field

from atc import events
from clood_site import shared
from clood_site.db import in_db_thread
from hosts.names import normalize_model_name
from hosts.snapshot import refresh_forever
from proxy.classify import classify
from proxy.errors import ApiError
from proxy.models import AUTO_ALIAS, Alias


@dataclass(frozen=True)
class AliasView:
    name: str  # as the admin wrote it
    key: str  # normalised
    targets: tuple  # normalised names, in order
    description: str
    enabled: bool
    updated_at: object

    @property
    def is_auto(self):
        return self.key == AUTO_ALIAS


@dataclass(frozen=True)
class AliasTable:
    by_key: dict  # normalised name -> AliasView, enabled or not
    loaded_at: float = 0.0

    def get(self, key):
        """The enabled alias of the normalised name `key`, or None."""
        alias = self.by_key.get(key)
        return alias if alias is not None and alias.enabled else None


_table = AliasTable(by_key={})
_refresher = None
_announced = None  # the alias list ATC pages were last told about (for_atc), by this process
_announced_at = float("-inf")  # when the database read behind `_announced` began (monotonic)
_announcing = threading.Lock()


def load():
    by_key = {}
    for row in Alias.objects.all():
        by_key[row.name_key] = AliasView(
            name=row.name,
            key=row.name_key,
            targets=tuple(row.target_keys()),
            description=row.description,
            enabled=row.enabled,
            updated_at=row.updated_at,
        )
    return AliasTable(by_key=by_key, loaded_at=time.monotonic())


async def refresh():
    global _table
    began = time.monotonic()
    _table = await in_db_thread(load)()
    if not shared.enabled():
        await _notice(_table, began)
    return _table


def announce():
    """An admin or a command changed the aliases (committed): every ATC page is told (several processes: through
    Redis). Sync: reads the table."""
    began = time.monotonic()
    listing = for_atc(load())
    if shared.enabled() or _claim(listing, began):  # several processes: another's change may be between
        events.publish("aliases_changed", aliases=listing)


async def _notice(table_, began):
    """One process: a change it did not announce itself (a management command's publish reaches only that command)
    is announced here, when the table is reloaded (`began`: when its query started)."""
    listing = for_atc(table_)
    if _claim(listing, began, quietly_first=True):
        await events.apublish("aliases_changed", aliases=listing)


def _claim(listing, read_at, quietly_first=False):
    """Whether `listing`, read from the database at `read_at` (monotonic), is news to the pages (then it is theirs
    now). The admin's thread and the reloading loop may see one change at once: it is announced once; a reload that
    began before the newest announcement may hold the table before it, and is no news. `quietly_first`: the first
    table a process loads is what the pages' snapshots show already."""
    global _announced, _announced_at
    with _announcing:
        if read_at < _announced_at:
            return False
        first, news = _announced is None, listing != _announced
        _announced, _announced_at = listing, read_at
    return news and not (first and quietly_first)


def invalidate():
    """Reload on the next request (the admin calls this after a change; other processes catch up on their own)."""
    global _table
    _table = AliasTable(by_key=_table.by_key)


async def table():
    """The alias table: loaded on first use (and after `invalidate`), then kept fresh by a background task."""
    global _refresher
    if _table.loaded_at == 0.0:
        await refresh()
    if _refresher is None or _refresher.done():
        refresher = refresh_forever(refresh, "the aliases")
        _refresher = asyncio.get_running_loop().create_task(refresher, name="clood-aliases")
    return _table


def for_atc(table_):
    """The enabled aliases as the ATC page shows them (snapshot and `aliases_changed`), by name."""
    return [
        {"name": a.name, "key": a.key, "auto": a.is_auto, "description": a.description, "targets": list(a.targets)}
        for a in sorted(table_.by_key.values(), key=lambda a: a.key)
        if a.enabled
    ]


def shown(key):
    """A normalised name as people write it: `fast`, not `fast:latest`."""
    return key.removesuffix(":latest")


@dataclass
class Link:
    """One real model in a route's chain."""

    model: str  # normalised
    tier: str = ""  # for auto: the tier it came from
    decision: object = None  # proxy.routing.Decision; None when skipped before routing
    skipped: str = ""  # why it was skipped before routing (a disabled tier)


@dataclass
class Route:
    """What serves a request for the name `asked`: routing decisions, one per real model, in the order to try."""

    asked: str
    links: list
    alias: AliasView | None = None
    tier: str = ""  # auto: the tier the classifier chose
    tier_reason: str = ""
    notes: list = field(default_factory=list)

    def decisions(self):
        """The decisions that have candidates, in order: the first is served, the rest are fallbacks."""
        return [link.decision for link in self.links if link.decision is not None and link.decision.candidates]

    def first_decision(self):
        return next((link.decision for link in self.links if link.decision is not None), None)

    def targets(self):
        return [shown(link.model) for link in self.links]


def resolve(model_key, payload, garden, aliases, choose):
    """The Route for a request of the normalised `model_key`; `choose(model)` is the routing decision for a real
    model (proxy.routing.choose_hosts with the request's strategy and backends)."""
    alias = aliases.get(model_key)
    if alias is None or garden.holders(model_key):
        return Route(model_key, [Link(model_key, decision=choose(model_key))])
    route = Route(model_key, [], alias=alias)
    if alias.is_auto:
        route.tier, route.tier_reason = classify(payload)
        route.links = _tier_links(alias, route, garden, aliases)
    else:
        route.links = [Link(target) for target in alias.targets]
    for link in route.links:
        if not link.skipped:
            link.decision = choose(link.model)
    _explain(route)
    return route


def _tier_links(alias, route, garden, aliases):
    """auto's chain: the classified tier's models first, then the other tiers' in auto's order."""
    wanted = normalize_model_name(route.tier)
    if wanted in alias.targets:
        order = [wanted] + [t for t in alias.targets if t != wanted]
    else:
        order = list(alias.targets)
        route.notes.append(f"{route.tier} is not one of auto's tiers")
    links, seen = [], set()
    for entry in order:
        tier_alias = None if garden.holders(entry) else aliases.by_key.get(entry)
        if tier_alias is not None and not tier_alias.enabled:
            links.append(Link(entry, tier=shown(entry), skipped="the tier alias is disabled"))
            continue
        for model in tier_alias.targets if tier_alias is not None else (entry,):
            if model not in seen:
                seen.add(model)
                links.append(Link(model, tier=shown(entry)))
    return links


def _explain(route):
    """Tell each decision with candidates why it is in the chain: alias name, reason, and auto's tier."""
    alias = route.alias
    for index, link in enumerate(route.links):
        decision = link.decision
        if decision is None or not decision.candidates:
            continue
        failed, skipped = [], []
        for before in route.links[:index]:
            if before.decision is not None and before.decision.candidates:
                failed.append(shown(before.model))
            else:
                skipped.append(f"{shown(before.model)} ({_why_skipped(before)})")
        later = [shown(a.model) for a in route.links[index + 1 :] if a.decision is not None and a.decision.candidates]
        path = " → ".join(p for p in (alias.name, link.tier, shown(link.model)) if p)
        if failed:
            text = f"{path}: the next in the chain after every host of {', '.join(failed)} failed"
        else:
            text = f"{path}: first in the chain held by a usable host"
        if skipped:
            text += f"; skipped {', '.join(skipped)}"
        if later:
            text += f"; fallbacks: {', '.join(later)}"
        decision.alias = alias.name
        decision.alias_reason = text
        if alias.is_auto:
            decision.auto = {"tier": link.tier, "classified": route.tier, "reason": _tier_reason(route, link)}


def _why_skipped(link):
    if link.skipped:
        return link.skipped
    excluded = link.decision.excluded.values()
    if any(why != "does not have the model" for why in excluded):
        return "no usable host"
    return "no host has it"


def _tier_reason(route, link):
    text = route.tier_reason
    for note in route.notes:
        text += f"; {note}"
    if link.tier == route.tier:
        return text
    wanted = [other for other in route.links if other.tier == route.tier]
    if any(other.decision is not None and other.decision.candidates for other in wanted):
        return text + f"; every host of the {route.tier} tier failed, so {link.tier}"
    if wanted:
        return text + f"; {route.tier} has no usable host, so {link.tier}"
    return text + f", so {link.tier}"


def unroutable_error(route, asked, garden):
    """The error for a request whose route has no candidate at all: 404 when no host has any of its models, 503 when
    hosts have them but none is usable now. `asked` is the name as the client wrote it."""
    held = [link for link in route.links if garden.holders(link.model)]
    if route.alias is not None:
        targets = ", ".join(route.targets()) or "nothing"
        if not held:
            return ApiError(404, f"The model '{asked}' is an alias of {targets}, and no host has any of them.",
                            param="model", code="model_not_found")  # fmt: skip
        return ApiError(503, f"No usable host has any model of the alias '{asked}' ({targets}) right now.",
                        code="no_usable_host", retry_after=5)  # fmt: skip
    if not held:
        return ApiError(404, f"The model '{asked}' does not exist on any host.", param="model", code="model_not_found")
    why = "; ".join(f"{name}: {reason}" for name, reason in route.first_decision().excluded.items()
                    if reason != "does not have the model")  # fmt: skip
    return ApiError(503, f"No usable host has '{asked}' right now ({why}).", code="no_usable_host", retry_after=5)


def first_held(models, garden, backends=("ollama", "openai")):
    """The first of the normalised `models` some usable host (of `backends`) holds right now, or None."""
    for model in models:
        if any(h.is_usable() and h.backend in backends for h in garden.holders(model)):
            return model
    return None


def tier_models(alias, garden, aliases, backends=("ollama", "openai")):
    """auto's tiers: shown tier name -> the model it would serve now (None when none)."""
    tiers = {}
    for entry in alias.targets:
        tier_alias = None if garden.holders(entry) else aliases.get(entry)
        models = tier_alias.targets if tier_alias is not None else (entry,)
        held = first_held(models, garden, backends)
        tiers[shown(entry)] = shown(held) if held else None
    return tiers


def serving_now(alias, garden, aliases, backends=("ollama", "openai")):
    """The real model a request for `alias` would get now, before any failure (auto: that of its first tier with
    one, since the tier depends on the prompt), or None."""
    if alias.is_auto:
        return next((m for m in tier_models(alias, garden, aliases, backends).values() if m), None)
    held = first_held(alias.targets, garden, backends)
    return shown(held) if held else None
