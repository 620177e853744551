"""The training report's first section: what this store can judge, part by part, in plant words.

Nothing here decides anything anew. What judged each shot, and whether anything did, comes from
the store's own scoring of its training history (``manifest["history"]``: the serving core, the
same code as ``moldwatch score``, per setting group: its shots, how many were judged, on which
resolution path). Which models were trained, and why the others were not, comes from the group
table (:mod:`model_store.groups`). Whether the setting-conditioned model weighs a part against its
own history or its maker's comes from the unit's own lists (see :func:`judged_on_own_history`).
The thresholds quoted are the store's config, never numbers of this module.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from model_store.groups import PART_CLUSTER, GroupKey
from model_store.serving.conditional import CONDITIONAL, PART_SEPARATOR
from model_store.serving.resolution import EXACT, ITEM, MAKER, NEAREST, PART, UNSCORABLE

# How a shot's model was found (model_store/serving/resolution.py), as the plant reads it.
PATH_WORDS = {
    EXACT: "its own setting's model",
    PART: "its part model (all its settings pooled)",
    NEAREST: "the model of another setting of the same part",
    ITEM: "the same item's model on another machine",
    MAKER: "another part's model of the same maker",
    CONDITIONAL: "the setting-conditioned model alone",
    UNSCORABLE: "not judged",
}
SHORT_PATH_WORDS = {
    EXACT: "own setting model", PART: "part model", NEAREST: "another setting's model", ITEM: "same item, other machine",
    MAKER: "another part's model", CONDITIONAL: "setting-conditioned only", UNSCORABLE: "not judged",
}
# Paths that judge a part by its own production (same machine and item) and those that borrow.
OWN_PATHS = (EXACT, PART, NEAREST)

OWN, BORROWED, NONE = "own", "borrowed", "none"
BASIS_SHORT = {OWN: "its own history", BORROWED: "other parts' history", NONE: "not judged"}


def judged_on_own_history(unit: dict[str, Any], part: str) -> bool:
    """Whether a maker's setting-conditioned unit weighs this part's shots against the part's own
    tables and line: it has both (``ConditionalUnit.evidence``; else the maker's fallback)."""
    return part in unit.get("raw_tables", ()) and part in {c["unit"] for c in unit.get("calibration", ())}


@dataclass
class PartCoverage:
    maker: str
    facility: str
    item: str
    shots: int = 0  # history shots with a known setting
    judged: int = 0  # of them, judged when the store scored its history
    paths: dict[str, int] = field(default_factory=dict)  # judged shots per resolution path
    settings: list[dict[str, Any]] = field(default_factory=list)  # its group-table rows, one per setting
    pool: dict[str, Any] | None = None  # its pooled group-table row
    own_settings: int = 0  # settings with a model of their own
    part_model: bool = False
    decider: str = "groups"  # "conditional", "both" or "groups": what decides the alarm
    own_unit: bool = False  # the setting-conditioned model weighs it against its own history
    basis: str = NONE
    how: str = ""
    why: str = ""  # why not judged against its own history ("" when it is), with the part's numbers
    why_kind: str = ""  # the same reason in general (parts with one reason are listed together)
    models: str = ""  # its own anomaly models, in words

    @property
    def name(self) -> str:
        return f"{self.item} on {self.facility}"


@dataclass
class Coverage:
    parts: list[PartCoverage]
    records: int
    unjudged: int  # history shots the store's own scoring left unjudged
    causes: list[tuple[str, int]]  # (why, shots), largest first
    decider_text: str

    @property
    def makers(self) -> int:
        return len({p.maker for p in self.parts})

    @property
    def machines(self) -> int:
        return len({p.facility for p in self.parts})

    @property
    def items(self) -> int:
        return len({p.item for p in self.parts})

    def by_basis(self, basis: str) -> list[PartCoverage]:
        return [p for p in self.parts if p.basis == basis]


def _gid(key: dict[str, Any]) -> str:
    return GroupKey(key["maker"], key["facility"], key["item"], int(key["cluster"])).id


def _decider_text(combine: str, group_excursions: bool, units: dict[str, Any], makers: set[str]) -> str:
    without = sorted(makers - set(units))
    tail = (f" Maker{'s' if len(without) > 1 else ''} {', '.join(html.escape(m) for m in without)} "
            f"{'have' if len(without) > 1 else 'has'} too little history for a setting-conditioned model: "
            "there the per-setting models decide.") if without and units else ""
    if not units:
        return ("Each shot is judged by a per-setting anomaly model: its own setting's, else its part's pooled model, "
                "else one borrowed from a similar setting or part where the store found that the lots confirm it.")
    if combine == "conditional":
        bands = ("; their bands still raise an alarm on a gross excursion" if group_excursions
                 else " but do not raise alarms")
        return ("The <b>setting-conditioned model</b> of each maker decides every alarm: it predicts what a shot's set points "
                "should produce on its part and alarms on what the set points do not explain. A part with enough history "
                "is weighed against its own, the others against all of their maker's parts. The per-setting models name "
                f"the shot's setting{bands}." + tail)
    if combine == "max":
        return ("A shot alarms when either the <b>setting-conditioned model</b> of its maker or the per-setting model "
                "that judges it alarms." + tail)
    return ("The <b>per-setting models</b> decide; the setting-conditioned model of the maker judges only the shots "
            "no setting model can." + tail)


Reason = tuple[str, str]  # (the reason in general, for grouping parts; the same for this part, with its numbers)


def _model_reason(part: PartCoverage, grouping: dict[str, Any]) -> Reason:
    """Why the part has no anomaly model of its own (neither per setting nor pooled)."""
    need = int(grouping["min_group_rows"])
    if part.shots < need:
        return (f"fewer shots than the {need:,} a model of its own needs",
                f"only {part.shots:,} shots in history, fewer than the {need:,} a model needs")
    if part.pool is None:
        text = "no lot covers its shots, so its clean days are unknown"
        return text, f"{part.shots:,} shots in history, but {text}"
    ceiling = float(grouping["part_max_lot_rate"])
    clean = int(part.pool["rows"])
    return (f"too few shots on days whose lots ran under {ceiling:.1%} defective for a model of its own (needs {need:,})",
            f"{part.shots:,} shots in history, but {f'only {clean:,}' if clean else 'none'} on days whose lots ran under "
            f"{ceiling:.1%} defective; a model needs {need:,}")


def _unit_reason(part: PartCoverage, unit: dict[str, Any] | None, conditional: dict[str, Any]) -> Reason:
    """Why the setting-conditioned model weighs the part against its maker's history, not its own."""
    if unit is None:
        text = f"maker {part.maker} has too little history for a setting-conditioned model"
        return text, text
    key = f"{part.facility}{PART_SEPARATOR}{part.item}"
    need = int(conditional["min_part_rows"])
    if key not in unit.get("raw_tables", ()):
        general = f"fewer shots than the {need:,} needed to judge a part against its own history"
        if part.shots < need:
            return general, f"only {part.shots:,} shots in history, fewer than the {need:,} needed to judge a part against its own history"
        return general, f"too few shots of its own for tables of its own (needs {need:,})"
    cal, share = int(conditional["min_calibration_rows"]), float(conditional["calibration_share"])
    return (f"too few shots to set an alarm line of its own: the line is set on the part's shots of the last {share:.0%} of "
            f"the history's days, scored by a fit on the days before, and needs {cal:,} shots in those last days and "
            f"{need:,} before them",
            f"too few shots to set its own alarm line (needs {cal:,} in the last {share:.0%} of the days and {need:,} before)")


def _joined(reasons: list[Reason]) -> Reason:
    return "; and ".join(r[0] for r in reasons), "; and ".join(r[1] for r in reasons)


def _shares(paths: dict[str, int], total: int) -> str:
    ranked = sorted(paths.items(), key=lambda kv: -kv[1])
    if len(ranked) == 1:
        return SHORT_PATH_WORDS.get(ranked[0][0], ranked[0][0])
    return " · ".join(f"{SHORT_PATH_WORDS.get(p, p)} {n / total:.0%}" for p, n in ranked if n)


def _models_text(part: PartCoverage, grouping: dict[str, Any]) -> str:
    settings = len(part.settings)
    words = []
    if part.own_settings:
        words.append(f"{part.own_settings} of {settings} setting{'s' if settings != 1 else ''}")
    if part.part_model:
        words.append("part model")
    if not words:
        return "none: " + _model_reason(part, grouping)[1]
    return " + ".join(words)


def store_coverage(manifest: dict[str, Any]) -> Coverage:
    """Every part (machine, item) with history: what decides its alarms, against whose history, and why not better."""
    config = manifest["config"]
    grouping, conditional_config = config["grouping"], config["conditional"]
    trained = {e["id"] for e in manifest["groups"]}
    history = manifest.get("history", {})
    scored = history.get("groups")  # None: a store without its history figures (judged counts unknown)
    section = manifest.get("conditional", {})
    units: dict[str, Any] = section.get("units", {})
    combine = str(section.get("combine", "groups"))
    parts: dict[tuple[str, str, str], PartCoverage] = {}
    for row in manifest["group_table"]:
        key = row["key"]
        part = parts.setdefault((key["maker"], key["facility"], key["item"]), PartCoverage(key["maker"], key["facility"], key["item"]))
        gid = _gid(key)
        if key["cluster"] == PART_CLUSTER:
            part.pool = row
            part.part_model = gid in trained
            continue
        part.settings.append(row)
        part.shots += int(row["rows"])
        part.own_settings += gid in trained
        seen = (scored or {}).get(gid)
        part.judged += int(row["rows"]) if scored is None else int(seen["scored"]) if seen else 0
        for path, n in (seen or {}).get("paths", {}).items():
            part.paths[path] = part.paths.get(path, 0) + int(n)
    causes: dict[str, int] = {}
    for part in parts.values():
        unit = units.get(part.maker)
        key = f"{part.facility}{PART_SEPARATOR}{part.item}"
        part.own_unit = unit is not None and judged_on_own_history(unit, key)
        part.decider = ("conditional" if unit is not None and combine == "conditional"
                        else "both" if unit is not None and combine == "max" else "groups")
        part.models = _models_text(part, grouping)
        judged = sum(part.paths.values()) or part.judged
        if part.shots and part.judged == 0:
            part.basis = NONE
        elif part.decider == "conditional":
            part.basis = OWN if part.own_unit else BORROWED
        else:
            top = max(part.paths, key=part.paths.get) if part.paths else None
            group_own = top in OWN_PATHS or (top == CONDITIONAL and part.own_unit)
            part.basis = OWN if group_own or (part.decider == "both" and part.own_unit) else BORROWED
        reasons: list[Reason] = []
        if part.basis == NONE:
            # with a model of its own, or its maker's setting-conditioned model (which judges whatever no
            # setting model can, whatever the combine rule), only a shot's missing values leave it unjudged
            if part.own_settings or part.part_model or unit is not None:
                text = (f"more than {float(config['threshold']['max_imputed_share']):.0%} of the production values "
                        "missing on its shots")
                reasons = [(text, text)]
            else:
                reasons = [_model_reason(part, grouping), _unit_reason(part, unit, conditional_config)]
            part.how = ""
        elif part.decider == "conditional":
            part.how = ""  # said once above the table: this maker's setting-conditioned model judges every shot
            if not part.own_unit:
                reasons = [_unit_reason(part, unit, conditional_config)]
        else:
            part.how = _shares(part.paths, judged) if part.paths else ""
            if part.basis == BORROWED:
                if part.own_settings or part.part_model:
                    text = "most of its shots run settings without a model of their own"
                    reasons = [(text, text)]
                else:
                    reasons = [_model_reason(part, grouping)]
                if unit is not None and not part.own_unit:
                    reasons.append(_unit_reason(part, unit, conditional_config))
        if reasons:
            part.why_kind, part.why = _joined(reasons)
        # where its unjudged shots went
        missing = part.shots - part.judged
        if missing > 0:
            if part.basis == NONE:
                causes[part.why_kind] = causes.get(part.why_kind, 0) + missing
            else:
                whole = [r for r in part.settings
                         if scored is not None and (scored.get(_gid(r["key"])) or {}).get("scored", 0) == 0 and r["rows"]]
                lost = sum(int(r["rows"]) for r in whole)
                if lost:
                    text = "settings that no model covers (no model of their own, of their part, or of a setting near them)"
                    causes[text] = causes.get(text, 0) + lost
                if missing - lost > 0:
                    text = (f"more than {float(config['threshold']['max_imputed_share']):.0%} of the production values "
                            "missing on the shot")
                    causes[text] = causes.get(text, 0) + missing - lost
    records = int(manifest["training"]["records"])
    unjudged = int(history.get("paths", {}).get(UNSCORABLE, {}).get("rows", sum(causes.values())))
    rest = unjudged - sum(causes.values())
    if rest > 0:
        causes["the shot's part or set points unknown (not filled in from the machine's neighbouring shots)"] = rest
    ordered = sorted(parts.values(), key=lambda p: (p.facility, p.item, p.maker))
    makers = {p.maker for p in ordered}
    text = _decider_text(combine, bool(section.get("group_excursions", False)), units, makers)
    return Coverage(ordered, records, unjudged, sorted(causes.items(), key=lambda kv: -kv[1]), text)


def _against(part: PartCoverage) -> str:
    if part.basis == BORROWED and part.decider == "conditional":
        return "its maker's history (all its parts)"
    return BASIS_SHORT[part.basis]


def _part_list(parts: list[PartCoverage], limit: int = 30) -> str:
    """The parts grouped by their reason, the most common first; each part with its shots."""
    by_reason: dict[str, list[PartCoverage]] = {}
    for part in parts:
        by_reason.setdefault(part.why_kind, []).append(part)
    items = []
    for reason, members in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        names = ", ".join(f"<b>{html.escape(p.item)}</b> on <b>{html.escape(p.facility)}</b> ({p.shots:,} shots)"
                          for p in members[:limit])
        more = f" and {len(members) - limit} more (see the table)" if len(members) > limit else ""
        items.append(f"<li>{html.escape(reason[:1].upper() + reason[1:])}: {names}{more}.</li>")
    return f"<ul class=parts>{''.join(items)}</ul>"


def coverage_section(manifest: dict[str, Any]) -> str:
    """The HTML of "What this store can judge"."""
    cov = store_coverage(manifest)
    own, borrowed, none = cov.by_basis(OWN), cov.by_basis(BORROWED), cov.by_basis(NONE)
    out = [
        f"<p class=lead>The history holds <b>{cov.records:,} shots</b> from <b>{cov.makers} maker{'s' if cov.makers != 1 else ''}</b>, "
        f"<b>{cov.machines} machine{'s' if cov.machines != 1 else ''}</b> and <b>{cov.items} item{'s' if cov.items != 1 else ''}</b>: "
        f"<b>{len(cov.parts)} parts</b> (a part is one item on one machine).</p>",
        "<ul class=verdict>",
        f"<li class=ok><b>{len(own)}</b> part{'s are' if len(own) != 1 else ' is'} judged against "
        f"{'their' if len(own) != 1 else 'its'} own history.</li>",
        f"<li class=warn><b>{len(borrowed)}</b> part{'s are' if len(borrowed) != 1 else ' is'} judged only against other parts' history "
        "(less specific than a part's own history: what is unusual for the part but usual for the others can pass).</li>",
        f"<li class=bad><b>{len(none)}</b> part{'s' if len(none) != 1 else ''} cannot be judged.</li>",
        "</ul>",
    ]
    share = cov.unjudged / cov.records if cov.records else 0.0
    out.append(f"<p>When the store scored its own training history, <b>{cov.unjudged:,} shots ({share:.1%})</b> came back "
               f"unjudged{':' if cov.causes else '.'}</p>")
    if cov.causes:
        out.append("<ul class=causes>" + "".join(f"<li>{n:,} shots: {html.escape(why)}</li>" for why, n in cov.causes) + "</ul>")
    out.insert(2, f"<p>How alarms are decided here: {cov.decider_text}</p>")
    if none:
        out.append("<h3>Parts that cannot be judged</h3>" + _part_list(none))
    if borrowed:
        out.append("<h3>Parts judged only against other parts' history</h3>" + _part_list(borrowed))
    rows = []
    for p in cov.parts:
        unjudged = p.shots - p.judged
        note = f"<br><small>{unjudged:,} shots not judged</small>" if unjudged > 0 and p.basis != NONE else ""
        rows.append(
            f'<tr class={p.basis} data-part="{html.escape(p.facility)}|{html.escape(p.item)}" data-basis="{p.basis}">'
            f"<td class=l>{html.escape(p.facility)}</td><td class=l>{html.escape(p.item)}</td><td class=l>{html.escape(p.maker)}</td>"
            f"<td>{p.shots:,}</td><td class=l>{_against(p)}{f'<br><small>{html.escape(p.how)}</small>' if p.how else ''}{note}</td>"
            f"<td class=l>{html.escape(p.models)}</td><td class=l>{html.escape(p.why)}</td></tr>")
    head = ("<tr><th class=l>machine</th><th class=l>item</th><th class=l>maker</th><th>shots in history</th>"
            "<th class=l>judged against</th><th class=l>anomaly models of its own"
            "<br><small>settings with a model; part model = all settings pooled</small></th>"
            "<th class=l>why not its own history</th></tr>")
    out.append(f"<h3>Every part</h3><table class=coverage>{head}{''.join(rows)}</table>")
    return "".join(out)


__all__ = ["store_coverage", "coverage_section", "judged_on_own_history", "Coverage", "PartCoverage", "PATH_WORDS",
           "SHORT_PATH_WORDS"]


def coverage_line(manifest: dict[str, Any]) -> str:
    """"What this store can judge" in one plain line (the demo's screen, a CLI summary)."""
    cov = store_coverage(manifest)
    own, borrowed, none = cov.by_basis(OWN), cov.by_basis(BORROWED), cov.by_basis(NONE)
    share = cov.unjudged / cov.records if cov.records else 0.0
    line = (f"{len(cov.parts)} parts: {len(own)} judged against their own history, {len(borrowed)} only against other "
            f"parts', {len(none)} not at all; {share:.1%} of the history came back unjudged")
    if cov.causes:
        line += f" (mostly: {cov.causes[0][0]})"
    return line
