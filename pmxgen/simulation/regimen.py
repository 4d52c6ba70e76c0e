"""Dosing regimens: readable constructors, a compact text form, scenario grids.

A :class:`Regimen` is a tuple of :class:`DoseEvent` (time, amount, route, infusion duration,
per-kg / per-m² scaling, steady state) plus the dosing interval τ used for default exposure
windows. Build one with :meth:`Regimen.every`, :meth:`Regimen.single`, :meth:`Regimen.from_table`
or from text with :func:`parse_regimen`::

    500 mg q12h x14                  500 mg every 12 h, 14 doses (route: the model's default)
    1 g iv over 1 h q8h x6           1000 mg infused over 1 h every 8 h, 6 doses
    10 mg/kg po q24h for 7 d         10 mg per kg of WT, every 24 h for 7 days (7 doses)
    loading 1 g then 500 mg q12h x13 a 1000 mg first dose, then 13 doses of 500 mg
    500 mg q12h ss                   at steady state from the first dose on
    200 mg once at 2 h               a single dose at t = 2 h

Units
-----
Amounts are converted to the data's amount unit, assumed **mg** unless ``amount_unit`` says
otherwise (``g``, ``mg``, ``mcg``/``ug``/``µg``, ``ng``); times to the data's time unit, assumed
**hours** unless ``time_unit`` says otherwise (``min``, ``h``, ``d``, ``w``). An unknown unit
raises :class:`RegimenError`. Frequency words ``qd``/``daily`` (24 h), ``bid`` (12 h), ``tid`` (8 h)
and ``qid`` (6 h) are accepted.

Routes
------
``oral``/``po`` doses go into the model's depot (CMT 1 of the oral models), ``iv`` doses into
its compartment named ``central``; no route means the model's default dose compartment.
An infusion is written with RATE = AMT / duration (NONMEM's convention: with a
bioavailability F ≠ 1 it lasts F·duration).

Weight- and BSA-based doses
---------------------------
``per="kg"`` multiplies the amount by the subject's ``WT`` (or ``WEIGHT``) covariate;
``per="m2"`` by ``BSA`` if the data have it, otherwise by Mosteller's
``sqrt(WT[kg] · HT[cm] / 3600)`` from ``WT`` and ``HT`` (or ``HEIGHT``).
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import PmxgenError

__all__ = ["Regimen", "DoseEvent", "RegimenError", "parse_regimen", "regimen_grid", "AMOUNT_UNITS", "TIME_UNITS",
           "dose_compartment"]

#: Amount units and their size in mg.
AMOUNT_UNITS: dict[str, float] = {"g": 1000.0, "mg": 1.0, "mcg": 1e-3, "ug": 1e-3, "µg": 1e-3, "ng": 1e-6}
#: Time units and their size in hours.
TIME_UNITS: dict[str, float] = {"min": 1 / 60, "mins": 1 / 60, "minute": 1 / 60, "minutes": 1 / 60, "h": 1.0,
                                "hr": 1.0, "hrs": 1.0, "hour": 1.0, "hours": 1.0, "d": 24.0, "day": 24.0,
                                "days": 24.0, "w": 168.0, "wk": 168.0, "week": 168.0, "weeks": 168.0}
_FREQUENCY_WORDS = {"qd": 24.0, "daily": 24.0, "od": 24.0, "bid": 12.0, "tid": 8.0, "qid": 6.0}
_ROUTES = {"iv": "iv", "po": "oral", "oral": "oral"}
_PER = {"kg": "kg", "m2": "m2", "m²": "m2"}


class RegimenError(PmxgenError, ValueError):
    """A regimen (text or arguments) that cannot be understood."""


@dataclass(frozen=True)
class DoseEvent:
    """One dose: time and amount in the data's units.

    Attributes
    ----------
    time, amount : float
    route : {"oral", "iv", None}
        None: the model's default dose compartment.
    cmt : int or None
        Explicit compartment (1-based), overriding ``route``.
    duration : float
        Infusion duration (0: bolus).
    per : {None, "kg", "m2"}
        ``amount`` is per kg of body weight or per m² of body-surface area.
    steady_state : bool
        The subject is at steady state of doses every ``interval`` when this dose is given
        (NONMEM SS=1: amounts are reset to the steady state).
    interval : float
        Dosing interval of the steady state (II).
    """

    time: float
    amount: float
    route: str | None = None
    cmt: int | None = None
    duration: float = 0.0
    per: str | None = None
    steady_state: bool = False
    interval: float = 0.0

    def __post_init__(self):
        for name in ("time", "amount", "duration", "interval"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                raise RegimenError(f"dose {name} must be a finite number (found {v!r})")
            object.__setattr__(self, name, float(v))
        if self.time < 0:
            raise RegimenError(f"dose time must be >= 0 (found {self.time:g})")
        if not self.amount > 0:
            raise RegimenError(f"dose amount must be > 0 (found {self.amount:g})")
        if self.duration < 0:
            raise RegimenError(f"infusion duration must be >= 0 (found {self.duration:g})")
        if self.route is not None and self.route not in ("oral", "iv"):
            raise RegimenError(f"route must be 'oral', 'iv' or None (found {self.route!r})")
        if self.per is not None and self.per not in ("kg", "m2"):
            raise RegimenError(f"per must be None, 'kg' or 'm2' (found {self.per!r})")
        if self.cmt is not None and (isinstance(self.cmt, bool) or int(self.cmt) != self.cmt or self.cmt < 1):
            raise RegimenError(f"cmt must be a compartment number >= 1 (found {self.cmt!r})")
        if self.steady_state and not self.interval > 0:
            raise RegimenError("a steady-state dose needs its dosing interval > 0")


def _amount(value, unit: str | None, amount_unit: str) -> float:
    for u in (unit, amount_unit):
        if u is not None and u not in AMOUNT_UNITS:
            raise RegimenError(f"unknown amount unit {u!r}; known units: {', '.join(AMOUNT_UNITS)}")
    return float(value) * (AMOUNT_UNITS[unit or amount_unit] / AMOUNT_UNITS[amount_unit])


def _fmt(v: float) -> str:
    return f"{v:.6g}"


@dataclass(frozen=True)
class Regimen:
    """A dosing regimen: dose events in the data's units, the interval τ and a label.

    Examples
    --------
    >>> r = Regimen.every(12, dose=500, n=14)
    >>> r.n_doses, r.interval, r.end, str(r)
    (14, 12.0, 168.0, '500 mg q12h x14')
    >>> Regimen.parse("1 g iv over 1 h q8h x6").events[0]
    DoseEvent(time=0.0, amount=1000.0, route='iv', cmt=None, duration=1.0, per=None, steady_state=False, interval=0.0)
    >>> Regimen.every(24, dose=10, n=3, per="kg", loading_dose=20).label
    '20 mg/kg then 10 mg/kg q24h x3'
    """

    events: tuple[DoseEvent, ...]
    interval: float | None = None
    label: str = ""

    def __post_init__(self):
        events = tuple(self.events)
        if not events:
            raise RegimenError("a regimen needs at least one dose")
        if not all(isinstance(e, DoseEvent) for e in events):
            raise RegimenError("regimen events must be DoseEvent objects")
        events = tuple(sorted(events, key=lambda e: e.time))
        if any(e.steady_state for e in events[1:]):
            raise RegimenError("only the first dose of a regimen may be a steady-state dose")
        object.__setattr__(self, "events", events)
        if self.interval is not None:
            if not (isinstance(self.interval, (int, float, np.integer, np.floating)) and self.interval > 0):
                raise RegimenError(f"interval must be > 0 (found {self.interval!r})")
            object.__setattr__(self, "interval", float(self.interval))
        if not self.label:
            object.__setattr__(self, "label", self._describe())

    # ---------------------------------------------------------------- constructors
    @classmethod
    def every(cls, interval: float, dose: float, n: int | None = None, *, duration: float | None = None,
              route: str | None = None, infusion: float = 0.0, loading_dose: float | None = None,
              per: str | None = None, start: float = 0.0, steady_state: bool = False, unit: str | None = None,
              amount_unit: str = "mg", cmt: int | None = None, label: str = "") -> "Regimen":
        """``dose`` every ``interval`` for ``n`` doses (or for a treatment ``duration``: ``ceil(duration/interval)``).

        ``unit`` is the unit of ``dose`` and ``loading_dose`` (default: the data's ``amount_unit``);
        ``infusion`` is the infusion duration (0: bolus).
        """
        if n is None and duration is None:
            raise RegimenError("give the number of doses n or the treatment duration")
        if n is not None and duration is not None:
            raise RegimenError("give either n or duration, not both")
        if not interval > 0:
            raise RegimenError(f"interval must be > 0 (found {interval!r})")
        if n is None:
            n = int(math.ceil(duration / interval - 1e-9))
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise RegimenError(f"the number of doses must be a whole number >= 1 (found {n!r})")
        amt = _amount(dose, unit, amount_unit)
        events = []
        for k in range(int(n)):
            a = _amount(loading_dose, unit, amount_unit) if (k == 0 and loading_dose is not None) else amt
            events.append(DoseEvent(start + k * interval, a, route=route, cmt=cmt, duration=infusion, per=per,
                                    steady_state=steady_state and k == 0, interval=interval if steady_state else 0.0))
        return cls(tuple(events), interval=interval, label=label)

    @classmethod
    def single(cls, dose: float, *, time: float = 0.0, route: str | None = None, infusion: float = 0.0,
               per: str | None = None, unit: str | None = None, amount_unit: str = "mg", cmt: int | None = None,
               label: str = "") -> "Regimen":
        """One dose at ``time``."""
        return cls((DoseEvent(time, _amount(dose, unit, amount_unit), route=route, cmt=cmt, duration=infusion,
                              per=per),), label=label)

    @classmethod
    def from_table(cls, table, *, interval: float | None = None, label: str = "") -> "Regimen":
        """Explicit events from a table (DataFrame or dict of columns).

        Columns: ``time`` and ``amount`` (or ``amt``), optional ``route``, ``cmt``, ``duration``
        (infusion), ``per``; case-insensitive.
        """
        frame = pd.DataFrame(table)
        cols = {c.lower(): c for c in frame.columns}
        if "amount" not in cols and "amt" in cols:
            cols["amount"] = cols["amt"]
        missing = [c for c in ("time", "amount") if c not in cols]
        if missing:
            raise RegimenError(f"the event table lacks column(s) {missing}; it has {list(frame.columns)}")
        known = {"time", "amount", "amt", "route", "cmt", "duration", "per"}
        unknown = [c for c in cols if c not in known]
        if unknown:
            raise RegimenError(f"the event table has unknown column(s) {unknown}; known: {sorted(known)}")
        events = []
        for _, row in frame.iterrows():   # a regimen has few events
            def get(name, default=None):
                if name not in cols:
                    return default
                v = row[cols[name]]
                return default if (v is None or (isinstance(v, float) and math.isnan(v))) else v
            route = get("route")
            if route is not None:
                route = _ROUTES.get(str(route).lower())
                if route is None:
                    raise RegimenError(f"unknown route {get('route')!r} in the event table; use oral/po or iv")
            cmt = get("cmt")
            events.append(DoseEvent(float(get("time")), float(get("amount")), route=route,
                                    cmt=None if cmt is None else int(cmt), duration=float(get("duration", 0.0)),
                                    per=get("per")))
        return cls(tuple(events), interval=interval, label=label)

    @classmethod
    def parse(cls, text: str, *, amount_unit: str = "mg", time_unit: str = "h") -> "Regimen":
        """The regimen written as text (see :func:`parse_regimen`)."""
        return parse_regimen(text, amount_unit=amount_unit, time_unit=time_unit)

    # ------------------------------------------------------------------- facts
    @property
    def n_doses(self) -> int:
        return len(self.events)

    @property
    def start(self) -> float:
        return self.events[0].time

    @property
    def last_dose(self) -> float:
        return self.events[-1].time

    @property
    def steady_state(self) -> bool:
        return self.events[0].steady_state

    @property
    def end(self) -> float:
        """End of the last dosing interval (last dose + τ), or of the last infusion for a regimen without τ."""
        if self.interval is not None:
            return self.last_dose + self.interval
        return max(e.time + e.duration for e in self.events)

    def at_steady_state(self) -> "Regimen":
        """The same regimen started at steady state (the first dose is an SS=1 dose with II = τ)."""
        if self.interval is None:
            raise RegimenError(f"regimen {self.label!r} has no dosing interval, so no steady state")
        first = replace(self.events[0], steady_state=True, interval=self.interval)
        label = self.label if self.label.endswith(" ss") else f"{self.label} ss"
        return Regimen((first,) + self.events[1:], interval=self.interval, label=label)

    def with_label(self, label: str) -> "Regimen":
        return replace(self, label=label)

    def windows(self, horizon: float | None = None) -> dict[str, tuple[float, float]]:
        """Default exposure windows: ``first`` and ``last`` dosing interval, or ``total`` (no interval)."""
        end = self.end if horizon is None else horizon
        if self.interval is None:
            return {"total": (self.start, max(end, self.start + 1e-9))}
        return {"first": (self.start, self.start + self.interval),
                "last": (self.last_dose, self.last_dose + self.interval)}

    def _describe(self) -> str:
        e0 = self.events[0]
        regular = self.interval is not None and all(
            abs(e.time - (self.start + k * self.interval)) < 1e-9 and e.route == e0.route and e.cmt == e0.cmt
            and e.duration == e0.duration and e.per == e0.per for k, e in enumerate(self.events))
        maint = self.events[1] if self.n_doses > 1 else e0

        def dose_text(e):
            t = f"{_fmt(e.amount)} mg" + (f"/{e.per}" if e.per else "")
            if e.route:
                t += f" {'po' if e.route == 'oral' else 'iv'}"
            if e.duration > 0:
                t += f" over {_fmt(e.duration)} h"
            return t
        if regular and all(e.amount == maint.amount for e in self.events[1:]):
            text = dose_text(maint) + f" q{_fmt(self.interval)}h x{self.n_doses}"
            if e0.amount != maint.amount:
                text = f"{dose_text(e0)} then {text}"
            if self.start:
                text += f" at {_fmt(self.start)} h"
            return text + (" ss" if e0.steady_state else "")
        if self.n_doses == 1:
            return dose_text(e0) + " once" + (f" at {_fmt(e0.time)} h" if e0.time else "")
        return f"{self.n_doses} doses: " + ", ".join(f"{dose_text(e)} at {_fmt(e.time)} h" for e in self.events)

    def __str__(self) -> str:
        return self.label


# ----------------------------------------------------------------------- text form
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+)|([a-zµ²]+)|(/)|([,;+]))", re.IGNORECASE)


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        while text[pos].isspace():
            pos += 1
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise RegimenError(f"regimen {text!r}: unexpected character {text[pos]!r} at position {pos + 1}")
        tokens.append(next(g for g in m.groups() if g is not None).lower())
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str, amount_unit: str, time_unit: str):
        if amount_unit not in AMOUNT_UNITS:
            raise RegimenError(f"unknown amount unit {amount_unit!r}; known units: {', '.join(AMOUNT_UNITS)}")
        if time_unit not in TIME_UNITS:
            raise RegimenError(f"unknown time unit {time_unit!r}; known units: {', '.join(TIME_UNITS)}")
        self.text, self.amount_unit, self.time_unit = text, amount_unit, time_unit
        self.tokens = _tokenize(text)
        self.pos = 0

    def fail(self, problem: str):
        raise RegimenError(f"regimen {self.text!r}: {problem}. Write e.g. '500 mg q12h x14', "
                           f"'1 g iv over 1 h q8h x6', '10 mg/kg po q24h for 7 d', 'loading 1 g then 500 mg q12h x13'")

    def peek(self, k: int = 0) -> str | None:
        return self.tokens[self.pos + k] if self.pos + k < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            self.fail("it ends too early")
        self.pos += 1
        return tok

    def number(self, what: str) -> float:
        tok = self.take()
        try:
            return float(tok)
        except ValueError:
            self.fail(f"expected a number for {what}, found {tok!r}")

    def duration(self, what: str) -> float:
        value = self.number(what)
        unit = self.take()
        if unit not in TIME_UNITS:
            self.fail(f"unknown time unit {unit!r} for {what} (known: {', '.join(sorted(set(TIME_UNITS)))})")
        return value * TIME_UNITS[unit] / TIME_UNITS[self.time_unit]

    def dose(self) -> dict:
        value = self.number("the dose")
        unit = self.take()
        if unit not in AMOUNT_UNITS:
            self.fail(f"unknown amount unit {unit!r} (known: {', '.join(AMOUNT_UNITS)})")
        out = {"amount": value * AMOUNT_UNITS[unit] / AMOUNT_UNITS[self.amount_unit], "per": None, "route": None,
               "duration": 0.0}
        if self.peek() == "/":
            self.take()
            per = self.take()
            if per == "m" and self.peek() == "2":
                per += self.take()
            if per not in _PER:
                self.fail(f"doses can be per kg or per m2, not per {per!r}")
            out["per"] = _PER[per]
        if self.peek() in _ROUTES:
            out["route"] = _ROUTES[self.take()]
        if self.peek() == "over":
            self.take()
            out["duration"] = self.duration("the infusion duration")
            if out["route"] is None:
                out["route"] = "iv"
        return out

    def parse(self) -> Regimen:
        loading = None
        if self.peek() in ("loading", "load", "ld"):
            self.take()
            if self.peek() == "dose":
                self.take()
            loading = self.dose()
            if self.peek() not in ("then", ",", ";", "+"):
                self.fail("a loading dose is followed by 'then' and the maintenance dose")
            self.take()
        main = self.dose()
        interval = n = total = None
        start, ss, once = 0.0, False, False
        while self.peek() is not None:
            tok = self.take()
            if tok == "q" or tok == "every":
                interval = self.duration("the dosing interval")
            elif tok in _FREQUENCY_WORDS:
                interval = _FREQUENCY_WORDS[tok] / TIME_UNITS[self.time_unit]
            elif tok in ("x", "times"):
                v = self.number("the number of doses")
                if v != int(v) or v < 1:
                    self.fail(f"the number of doses must be a whole number >= 1 (found {v:g})")
                n = int(v)
            elif tok == "for":
                total = self.duration("the treatment duration")
            elif tok in ("once", "single"):
                once = True
            elif tok == "ss":
                ss = True
            elif tok in ("at", "from", "starting"):
                start = self.duration("the start time")
            else:
                self.fail(f"unexpected {tok!r}")
        if once and (interval is not None or n not in (None, 1)):
            self.fail("'once' cannot go with an interval or a number of doses")
        if interval is None:
            if (n or 1) > 1 or total is not None or ss:
                self.fail("several doses, a treatment duration or steady state need an interval (e.g. q12h)")
            if loading is not None:
                self.fail("a loading dose needs a maintenance interval (e.g. q12h)")
            return Regimen.single(main["amount"], time=start, route=main["route"], infusion=main["duration"],
                                  per=main["per"])
        if n is not None and total is not None:
            self.fail("give either 'x N' or 'for DURATION', not both")
        if n is None and total is None:
            n = 1 if not ss else 1
        if loading is not None:
            if loading["route"] != main["route"] or loading["duration"] != main["duration"] or \
                    loading["per"] != main["per"]:
                # a loading dose with another route or infusion: explicit events
                n_main = n if n is not None else int(math.ceil(total / interval - 1e-9))
                events = [DoseEvent(start, loading["amount"], route=loading["route"], duration=loading["duration"],
                                    per=loading["per"])]
                events += [DoseEvent(start + k * interval, main["amount"], route=main["route"],
                                     duration=main["duration"], per=main["per"]) for k in range(1, n_main + 1)]
                return Regimen(tuple(events), interval=interval)
            n_total = (n + 1) if n is not None else None
            reg = Regimen.every(interval, main["amount"], n_total, duration=None if n is not None else total + interval,
                                route=main["route"], infusion=main["duration"], per=main["per"], start=start,
                                loading_dose=loading["amount"], amount_unit=self.amount_unit)
        else:
            reg = Regimen.every(interval, main["amount"], n, duration=total, route=main["route"],
                                infusion=main["duration"], per=main["per"], start=start, amount_unit=self.amount_unit)
        return reg.at_steady_state() if ss else reg


def parse_regimen(text: str, *, amount_unit: str = "mg", time_unit: str = "h") -> Regimen:
    """A :class:`Regimen` from its compact text form.

    Grammar (case-insensitive, spaces optional between numbers and units)::

        [loading DOSE then] DOSE [/kg | /m2] [iv | po | oral] [over DURATION]
            [qDURATION | every DURATION | qd | bid | tid | qid] [xN | for DURATION] [ss] [at TIME] [once]

    Parameters
    ----------
    text : str
    amount_unit, time_unit : str
        Units of the data (default mg and h); the text's amounts and times are converted.

    Raises
    ------
    RegimenError
        Naming the part that cannot be read, with examples.

    Examples
    --------
    >>> parse_regimen("500 mg q12h x14").n_doses
    14
    >>> r = parse_regimen("loading 1 g then 500 mg q12h x13")
    >>> [e.amount for e in r.events[:3]], r.n_doses
    ([1000.0, 500.0, 500.0], 14)
    >>> parse_regimen("10 mg/kg po q24h for 7 d").events[0].per
    'kg'
    >>> parse_regimen("500 mgg q12h")
    Traceback (most recent call last):
    ...
    pmxgen.simulation.regimen.RegimenError: regimen '500 mgg q12h': unknown amount unit 'mgg' ...
    """
    if not isinstance(text, str) or not text.strip():
        raise RegimenError(f"a regimen text must be a non-empty string (found {text!r})")
    regimen = _Parser(text, amount_unit, time_unit).parse()
    return regimen.with_label(" ".join(text.split()))


def regimen_grid(doses: Sequence[float], intervals: Sequence[float], *, n: int | None = None,
                 duration: float | None = None, **options) -> list[Regimen]:
    """Every combination of dose and interval as :meth:`Regimen.every` (a scenario grid).

    Give the number of doses ``n`` (the same for every interval) or the treatment ``duration``
    (so that every regimen covers the same time); ``options`` go to :meth:`Regimen.every`.

    Examples
    --------
    >>> [str(r) for r in regimen_grid([250, 500], [12, 24], duration=48)]
    ['250 mg q12h x4', '250 mg q24h x2', '500 mg q12h x4', '500 mg q24h x2']
    """
    if not len(doses) or not len(intervals):
        raise RegimenError("give at least one dose and one interval")
    return [Regimen.every(tau, dose=d, n=n, duration=duration, **options)
            for d, tau in itertools.product(doses, intervals)]


def as_regimens(regimens) -> list[Regimen]:
    """A list of Regimen from Regimen objects and texts; labels must be distinct."""
    if isinstance(regimens, (Regimen, str)):
        regimens = [regimens]
    out = [r if isinstance(r, Regimen) else parse_regimen(r) for r in regimens]
    if not out:
        raise RegimenError("give at least one regimen")
    labels = [r.label for r in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise RegimenError(f"regimen labels must be distinct; repeated: {dup}. Use regimen.with_label(...)")
    return out


def dose_compartment(event: DoseEvent, structural) -> int:
    """The 1-based compartment of ``event`` in ``structural``'s numbering (route → depot / central)."""
    comps = tuple(structural.compartments)
    if event.cmt is not None:
        if event.cmt > len(comps):
            raise RegimenError(f"dose into compartment {event.cmt}, but {structural.name} has {len(comps)} "
                               f"({', '.join(comps)})")
        return int(event.cmt)
    if event.route is None:
        return int(structural.default_dose_cmt)
    if event.route == "oral":
        if "depot" not in comps:
            raise RegimenError(f"an oral dose needs a depot compartment, which {structural.name} lacks "
                               f"({', '.join(comps)}); give the dose iv")
        return comps.index("depot") + 1
    if "central" in comps:
        return comps.index("central") + 1
    return int(structural.default_obs_cmt)


def body_size(per: str, covariates: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-subject WT (``per='kg'``) or BSA (``per='m2'``: BSA column or Mosteller from WT, HT in cm)."""
    upper = {k.upper(): k for k in covariates}

    def find(*names):
        for n in names:
            if n in upper:
                return np.asarray(covariates[upper[n]], dtype=np.float64)
        return None
    if per == "kg":
        wt = find("WT", "WEIGHT", "BW")
        if wt is None:
            raise RegimenError(f"a per-kg dose needs a WT (or WEIGHT) covariate; the subjects have "
                               f"{', '.join(covariates) or 'no covariates'}")
        return wt
    bsa = find("BSA")
    if bsa is None:
        wt, ht = find("WT", "WEIGHT", "BW"), find("HT", "HEIGHT")
        if wt is None or ht is None:
            raise RegimenError(f"a per-m2 dose needs a BSA covariate or WT and HT (cm); the subjects have "
                               f"{', '.join(covariates) or 'no covariates'}")
        bsa = np.sqrt(wt * ht / 3600.0)
    return bsa
