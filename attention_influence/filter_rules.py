"""Which filter rules run, with which thresholds, on which domain; and the first rule a text breaks.

A rule set is a list of rule names and group names: the groups are `gopher_repetition`,
`gopher_quality` (`attention_influence.gopher`), `c4`, `fineweb_quality` (`attention_influence.fineweb`)
and `code` (`attention_influence.code_rules`); `exact_duplicate` and `near_duplicate` are decided across
documents by the filter job, not per text; `none` is the empty set. Whatever order they are listed
in, rules are checked in one fixed order, FineWeb's: duplicates, then the groups as above, each in
its own order, so the rule reported is the first one broken. A null or blank text is `empty` under
every rule set. Each rule's threshold (and the few settings the rules read) can be set by name.

The settings are text so that they fit one flag each (and conf/filter.yaml):

    rules          exact_duplicate,gopher_repetition,gopher_quality      every domain's rules
    domain_rules   code=exact_duplicate,code; legal=gopher_repetition     a domain's own rules
    skip_domains   legal,web                                              domains no rule touches
    thresholds     gopher_min_words=30, code:code_max_line_length=2000    [domain:]name=value

An unknown name or a malformed item is a ValueError of one line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from difflib import get_close_matches

from attention_influence import code_rules, fineweb, gopher

EMPTY = gopher.EMPTY
EXACT_DUPLICATE = gopher.EXACT_DUPLICATE
NEAR_DUPLICATE = "near_duplicate"
CORPUS_RULES = (EXACT_DUPLICATE, NEAR_DUPLICATE)
NONE = "none"

# Group name -> (its rules with their thresholds, in order; the settings its rules read).
GROUPS: dict[str, tuple[dict[str, float | None], dict[str, float]]] = {
    "gopher_repetition": (gopher.REPETITION_RULES, {}),
    "gopher_quality": (gopher.QUALITY_RULES, {}),
    "c4": (fineweb.C4_RULES, fineweb.C4_SETTINGS),
    "fineweb_quality": (fineweb.FINEWEB_RULES, fineweb.FINEWEB_SETTINGS),
    "code": (code_rules.CODE_RULES, {}),
}
GROUP_OF = {rule: group for group, (rules, _) in GROUPS.items() for rule in rules}
# Every name a threshold can be given for: each rule that has one, and each setting.
THRESHOLDS: dict[str, float] = {name: value for rules, settings in GROUPS.values()
                                for name, value in {**rules, **settings}.items() if value is not None}
_NEEDS_WORDS = {"gopher_repetition", "gopher_quality", "fineweb_quality"}
_DOMAIN = re.compile(r"[^\s=;:,]+")


def rule_names() -> list[str]:
    """Every name `rejected_by` can hold, in the order rules are checked."""
    return [EMPTY, *CORPUS_RULES, *GROUP_OF]


def _check(group: str, text: str, limits: dict, words: list[str] | None) -> str | None:
    if group == "gopher_repetition":
        return gopher.repetition_rule(text, limits, words)
    if group == "gopher_quality":
        return gopher.quality_rule(text, limits, words)
    if group == "c4":
        return fineweb.c4_rule(text, limits)
    if group == "fineweb_quality":
        return fineweb.fineweb_rule(text, limits, words)
    return code_rules.code_rule(text, limits)


@dataclass(frozen=True)
class RuleSet:
    """The rules that run on one domain, in checking order, and each text rule's limits by group."""

    rules: tuple[str, ...]
    checks: tuple[tuple[str, dict], ...] = ()

    @property
    def dedups(self) -> bool:
        return EXACT_DUPLICATE in self.rules

    @property
    def near_dedups(self) -> bool:
        return NEAR_DUPLICATE in self.rules

    def first_rule(self, text: str | None) -> str | None:
        """The first per-text rule `text` breaks (`empty` for a null or blank one), or None if it passes."""
        if not text or not text.strip():
            return EMPTY
        words = gopher.split_words(text) if any(g in _NEEDS_WORDS for g, _ in self.checks) else None
        for group, limits in self.checks:
            fired = _check(group, text, limits, words)
            if fired:
                return fired
        return None


def rule_set(names: list[str], thresholds: dict[str, float] | None = None) -> RuleSet:
    """The rule set of these rule and group names (see `parse_rules`), thresholds over the published ones."""
    chosen = set(names)
    for group, (rules, _) in GROUPS.items():
        if group in chosen:
            chosen |= set(rules)
    values = {**THRESHOLDS, **(thresholds or {})}
    ordered = [r for r in rule_names() if r in chosen and r != EMPTY]
    checks = []
    for group, (rules, settings) in GROUPS.items():
        limits = {r: values.get(r) for r in rules if r in chosen}
        if limits:
            checks.append((group, {**limits, **{s: values[s] for s in settings}}))
    return RuleSet(tuple(ordered), tuple(checks))


def parse_rules(spec: str | None) -> list[str]:
    """Rule and group names separated by commas or white space; `none` alone: no rule."""
    names = [n for n in re.split(r"[,\s]+", spec or "") if n]
    if names == [NONE]:
        return []
    known = {*rule_names(), *GROUPS}
    for name in names:
        if name not in known:
            raise ValueError(f"unknown rule {name!r}{_did_you_mean(name, known)}; rules are the groups "
                             f"{', '.join(GROUPS)}, their rules, {', '.join(CORPUS_RULES)} or none")
    return names


def parse_thresholds(spec: str | None) -> dict[str | None, dict[str, float]]:
    """`[domain:]name=value` items separated by commas or white space -> {domain or None: {name: value}}."""
    parsed: dict[str | None, dict[str, float]] = {}
    for item in (i for i in re.split(r"[,\s]+", spec or "") if i):
        key, equals, value = item.partition("=")
        domain, colon, name = key.rpartition(":")
        if not equals or (colon and not _DOMAIN.fullmatch(domain)):
            raise ValueError(f"threshold {item!r} is not [domain:]name=value")
        if name not in THRESHOLDS:
            raise ValueError(f"unknown threshold {name!r}{_did_you_mean(name, THRESHOLDS)}; "
                             f"thresholds are named after their rules (docs/filter_and_probes.md)")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number >= 0):
            raise ValueError(f"threshold {name} must be a number >= 0, got {value!r}")
        parsed.setdefault(domain if colon else None, {})[name] = number
    return parsed


def parse_domains(spec: str | None) -> list[str]:
    """Domain names separated by commas or white space."""
    domains = [d for d in re.split(r"[,\s]+", spec or "") if d]
    for domain in domains:
        if not _DOMAIN.fullmatch(domain):
            raise ValueError(f"domain {domain!r} may not hold '=', ';' or ':'")
    return domains


def parse_domain_rules(spec: str | None) -> dict[str, list[str]]:
    """`domain=rules` items separated by semicolons -> {domain: rule names}."""
    parsed: dict[str, list[str]] = {}
    for item in (i.strip() for i in (spec or "").split(";") if i.strip()):
        domain, equals, names = item.partition("=")
        domain = domain.strip()
        if not equals or not _DOMAIN.fullmatch(domain):
            raise ValueError(f"domain rules {item!r} are not domain=rules")
        if domain in parsed:
            raise ValueError(f"domain {domain} is given rules twice")
        parsed[domain] = parse_rules(names)
    return parsed


@dataclass(frozen=True)
class FilterConfig:
    """Every domain's rule set: its own where one was given, else the default."""

    default: RuleSet
    domains: dict[str, RuleSet] = field(default_factory=dict)

    def rules_for(self, domain: str | None) -> RuleSet:
        return self.domains.get(domain, self.default) if domain is not None else self.default

    @property
    def rule_sets(self) -> list[RuleSet]:
        return [self.default, *self.domains.values()]


def filter_config(rules: str | None, domain_rules: str | None = None, skip_domains: str | None = None,
                  thresholds: str | None = None) -> FilterConfig:
    """The configuration the four settings describe (see the module docstring); ValueError if one is wrong."""
    default_names = parse_rules(rules)
    own = parse_domain_rules(domain_rules)
    skipped = parse_domains(skip_domains)
    both = sorted(set(skipped) & set(own))
    if both:
        raise ValueError(f"domain(s) {', '.join(both)} both skipped and given rules")
    values = parse_thresholds(thresholds)
    everywhere = values.pop(None, {})
    for domain in skipped:
        if domain in values:
            raise ValueError(f"domain {domain} is skipped, so it has no thresholds to set")
    domains = {d: rule_set(own.get(d, default_names), {**everywhere, **values.get(d, {})})
               for d in [*own, *(d for d in values if d not in own)]}
    domains.update({d: rule_set([]) for d in skipped})
    return FilterConfig(rule_set(default_names, everywhere), domains)


def _did_you_mean(name: str, known) -> str:
    close = get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
