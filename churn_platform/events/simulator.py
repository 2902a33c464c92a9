"""A simulated subscription business that writes `customer-events`.

The simulator produces the event stream of a SaaS business whose churn has a
known cause, so the platform's models can be checked against the truth.

Customers and their subscriptions
    `customers` customers take part. A share (`existing_share`) was already
    subscribed before the window: each gets a `subscription_started` in the
    first half hour of the window, so its subscription state is known, while
    its true tenure (hidden) is months to years. The rest sign up over the
    window, a little more often as the business grows.
    `subscription_started` carries plan, mrr (plan price less a discount),
    channel and country; `subscription_changed` carries the new plan and mrr.
    `subscription_cancelled` is the churn event (attribute `reason`:
    `voluntary` or `payment_failed`). A customer who cancels never comes back:
    every customer has at most one subscription, which keeps labels simple.

Activity
    Each customer has a hidden activity level (log-normal, higher on bigger
    plans) and an engagement multiplier that wanders around 1. Every day a
    customer produces Poisson counts of `login` (attribute device), `session`
    (value = duration in seconds), `feature_use` (attribute feature) and
    `purchase` (value = amount), proportional to activity × engagement, less
    at weekends: about 1.6 a day for an average engaged customer, ≈90 events
    per customer in a 90-day window. `support_ticket` (attribute category) and `payment_failed`
    (value = the amount due, attribute attempt) come from the billing and
    disengagement processes below.

What drives churn (the ground truth)
    A customer can slip into decline (0.6% of engaged customers a day, and 12%
    of new ones never take off): engagement then falls by a customer-specific
    1–8% a day (median 3%) until the customer recovers (1% a day) or leaves.
    Declining customers file more support tickets and downgrade; engaged ones
    sometimes upgrade. Billing runs every 30 days from the (true) signup; a card
    fails with a customer-specific probability (most rarely, 15% of customers
    often), is retried every 3 days, and after four failures in a row the
    subscription is cancelled involuntarily.

    The daily hazard of a voluntary cancellation is

        h = h0 · exp( 3.0  · disengagement            max(0, −ln engagement)
                    + 0.9  · recent payment failures  (decayed, 14-day time constant)
                    + 0.35 · recent support tickets   (decayed, 14-day time constant)
                    + 0.45 · ln(mrr / 49)             (price)
                    + 0.3  · [true tenure < 30 days]
                    + channel effect + hidden frailty ~ Normal(0, hidden_risk) )

    with h0 = 0.00012 (× `churn_scale`). Disengagement is visible only through
    activity relative to the customer's own past (counts over 7/28/90 days,
    recency, trend), so a model needs those features. For "cancels within 30
    days" at weekly as-of dates, gradient boosting on such features ranks well
    but below the true hazard, and mrr alone about at random (measured values:
    docs/architecture.md, The simulator). About 9% of active customers cancel
    within 30 days; a fifth of the existing customers are already declining when
    the window opens, so the churn rate is roughly steady from the first week.

Determinism, order and size
    Everything is drawn from `numpy.random.default_rng` streams derived from
    `seed`: the same configuration (including `end`) gives byte-identical
    messages. Event ids are `<tag>-<day>-<n>` where the tag is a hash of the
    seed and the sizes, so producing the same simulation twice produces the
    same ids (which the feature pipeline drops as duplicates); use another
    seed for another business. Events are generated one day at a time with
    numpy and formatted with polars, so memory holds one day of events, and
    each day's events are emitted in event-time order.

Malformed messages
    With `bad_fraction` F > 0, about F of all messages are malformed ones
    cycling through every reason code of `Reason.ALL`, each labelled with the
    reason validation must give it. They are drawn from a separate stream and
    inserted between the valid events, so the valid events are the same with
    and without them.

Live mode
    `live_messages`/`run_live` continue the same business after the `days`
    window (the window is simulated, not emitted): new customers keep signing
    up, existing ones keep using the product and churning, with each event's
    `ts` set to the wall clock as it is emitted; a simulated day lasts as long
    as its events take at the chosen rate. Run `simulate` first with the same
    seed and sizes to give the live stream its history (`churn-platform up`
    does); ids never collide with that history's.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import NamedTuple

import msgspec
import numpy as np
import polars as pl

from churn_platform.events.contract import (
    DEFAULT_MAX_MESSAGE_BYTES,
    EVENTS_TOPIC,
    ID_MAX_LENGTH,
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_CHANGED,
    SUBSCRIPTION_STARTED,
    TS_MIN_DATE,
    TS_MIN_MS,
    Reason,
)
from churn_platform.kafka.admin import DEFAULT_PARTITIONS, ensure_topic
from churn_platform.kafka.config import KafkaSettings
from churn_platform.kafka.producer import EventProducer

DAY_MS = 86_400_000

# --- The catalogue ---------------------------------------------------------

PLANS = ("basic", "standard", "pro", "business")
PLAN_PRICES = np.array([19.0, 49.0, 99.0, 249.0])
PLAN_WEIGHTS = np.array([0.45, 0.33, 0.16, 0.06])
# Customers on bigger plans use the product more.
PLAN_ACTIVITY = np.array([0.85, 1.0, 1.2, 1.4])
DISCOUNTS = np.array([0.0, 0.1, 0.2])
DISCOUNT_WEIGHTS = np.array([0.7, 0.2, 0.1])
CHANNELS = ("organic", "paid_search", "referral", "social", "partner", "sales")
CHANNEL_WEIGHTS = np.array([0.34, 0.24, 0.14, 0.12, 0.08, 0.08])
# Log-hazard offsets: bought traffic churns more, referred and sold customers less.
CHANNEL_HAZARD = np.array([0.0, 0.3, -0.3, 0.35, -0.1, -0.35])
COUNTRIES = ("US", "GB", "DE", "FR", "IN", "BR", "CA", "AU", "NL", "ES")
COUNTRY_WEIGHTS = np.array([0.34, 0.11, 0.1, 0.07, 0.09, 0.07, 0.07, 0.05, 0.05, 0.05])
DEVICES = ("web", "ios", "android")
DEVICE_WEIGHTS = np.array([0.6, 0.22, 0.18])
FEATURES = ("dashboard", "reports", "export", "api", "integrations", "alerts", "automation")
FEATURE_WEIGHTS = np.array([0.3, 0.2, 0.12, 0.12, 0.1, 0.1, 0.06])
TICKET_CATEGORIES = ("billing", "bug", "how_to", "account")
TICKET_WEIGHTS = np.array([0.15, 0.4, 0.3, 0.15])
CANCEL_REASONS = ("voluntary", "payment_failed")

# --- The ground truth (see the module docstring) -----------------------------

# Events per day of an average customer at engagement 1: login, session, feature_use, purchase.
ACTIVITY_RATES = np.array([0.65, 0.55, 0.52, 0.03])
ACTIVITY_SIGMA = 0.55  # spread of the hidden activity level (log-normal)
WEEKEND_FACTOR = 0.6
ENGAGEMENT_RHO = 0.92  # day-to-day persistence of engagement noise
ENGAGEMENT_NOISE = 0.04
DECLINE_ONSET = 0.006  # daily chance that an engaged customer starts to decline
DECLINE_RECOVERY = 0.01  # daily chance that a declining customer recovers
DECLINE_SPEED = 0.03  # median fall of log-engagement per day while declining
DECLINE_SPEED_SPREAD = 0.5  # log-normal spread of the decline speed between customers
DECLINE_SPEED_RANGE = (0.008, 0.08)
ONBOARDING_SPEEDUP = 1.5  # customers who fail to take off decline faster
FAILED_ONBOARDING = 0.12  # share of new customers who decline from the start
INITIAL_DECLINING = 0.2  # share of existing customers already declining at the window start
TICKET_BASE = 0.006
TICKET_DECLINING = 0.05
TICKET_AFTER_PAYMENT_FAILURE = 0.35
BILLING_PERIOD_DAYS = 30
RETRY_DAYS = 3
FAILURES_BEFORE_INVOLUNTARY_CHURN = 4
CARD_RISK_LOW = 0.02
CARD_RISK_HIGH = 0.3
RISKY_CARD_SHARE = 0.15
RETRY_FAILURE = 0.55
UPGRADE_RATE = 0.002
DOWNGRADE_RATE = 0.006
HAZARD_BASE = 0.00012
HAZARD_DISENGAGEMENT = 3.0
HAZARD_PAYMENT_FAILURES = 0.9
HAZARD_TICKETS = 0.35
HAZARD_PRICE = 0.45
HAZARD_NEW_CUSTOMER = 0.3
REFERENCE_MRR = 49.0
NEW_CUSTOMER_DAYS = 30
RECENT_DECAY = float(np.exp(-1 / 14))
HAZARD_CAP = 0.5

# --- Event types and the prebuilt JSON fragments ----------------------------

# Type codes, indices into EVENT_TYPES.
T_STARTED, T_LOGIN, T_SESSION, T_FEATURE, T_PURCHASE, T_TICKET, T_PAYMENT, T_CHANGED, T_CANCEL = (
    range(9)
)
EVENT_TYPES = (
    SUBSCRIPTION_STARTED,
    "login",
    "session",
    "feature_use",
    "purchase",
    "support_ticket",
    "payment_failed",
    SUBSCRIPTION_CHANGED,
    SUBSCRIPTION_CANCELLED,
)
_TYPE_SERIES = pl.Series(EVENT_TYPES, dtype=pl.String)


def _attr_json(attributes: dict[str, object]) -> str:
    return ',"attributes":' + msgspec.json.encode(attributes).decode()


def _build_attribute_tails() -> tuple[list[str], dict[str, int]]:
    """Every `,"attributes":{...}` fragment the simulator can emit, by code.

    Code 0 is the empty fragment. Plans, channels and countries are few, so even
    `subscription_started` attributes come from this table and no event needs
    per-event Python to format.
    """
    tails = [""]
    offsets: dict[str, int] = {}

    def add(name: str, items: list[dict[str, object]]) -> None:
        offsets[name] = len(tails)
        tails.extend(_attr_json(item) for item in items)

    add("device", [{"device": d} for d in DEVICES])
    add("feature", [{"feature": f} for f in FEATURES])
    add("ticket", [{"category": c} for c in TICKET_CATEGORIES])
    add("attempt", [{"attempt": k} for k in range(1, FAILURES_BEFORE_INVOLUNTARY_CHURN + 1)])
    add("cancel", [{"reason": r} for r in CANCEL_REASONS])
    add(
        "changed",
        [
            {"plan": PLANS[p], "mrr": _mrr(p, d)}
            for p in range(len(PLANS))
            for d in range(len(DISCOUNTS))
        ],
    )
    add(
        "started",
        [
            {
                "plan": PLANS[p],
                "mrr": _mrr(p, d),
                "channel": CHANNELS[ch],
                "country": COUNTRIES[co],
            }
            for p in range(len(PLANS))
            for d in range(len(DISCOUNTS))
            for ch in range(len(CHANNELS))
            for co in range(len(COUNTRIES))
        ],
    )
    return tails, offsets


def _mrr(plan: int, discount: int) -> float:
    return round(float(PLAN_PRICES[plan] * (1 - DISCOUNTS[discount])), 2)


_ATTR_TAILS, _ATTR_OFFSET = _build_attribute_tails()
_ATTR_SERIES = pl.Series(_ATTR_TAILS, dtype=pl.String)
_MRR_TABLE = np.array(
    [[_mrr(p, d) for d in range(len(DISCOUNTS))] for p in range(len(PLANS))], dtype=np.float64
)


# --- Configuration and results ----------------------------------------------


class SimulatorConfigError(ValueError):
    """A simulator setting is out of range; the message names the setting."""


@dataclass(frozen=True)
class SimulatorConfig:
    """What to simulate. `end` is the end of the window (aware; None = now)."""

    customers: int = 3000
    days: int = 120
    seed: int = 42
    end: datetime | None = None
    bad_fraction: float = 0.0
    # Realism knobs.
    existing_share: float = 0.6  # customers subscribed before the window starts
    activity_scale: float = 1.0  # multiplies every activity rate
    churn_scale: float = 1.0  # multiplies the churn hazard
    hidden_risk: float = 0.5  # sd of the unobserved log-hazard per customer

    def __post_init__(self) -> None:
        _check_int("customers", self.customers, 1, 10_000_000)
        _check_int("days", self.days, 1, 3650)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_range("bad_fraction", self.bad_fraction, 0.0, 1.0, high_open=True)
        _check_range("existing_share", self.existing_share, 0.0, 1.0)
        _check_range("activity_scale", self.activity_scale, 0.0, 100.0, low_open=True)
        _check_range("churn_scale", self.churn_scale, 0.0, 100.0)
        _check_range("hidden_risk", self.hidden_risk, 0.0, 5.0)
        if self.end is not None:
            if not isinstance(self.end, datetime):
                raise SimulatorConfigError(f"end must be a datetime, got {type(self.end).__name__}")
            if self.end.tzinfo is None or self.end.utcoffset() is None:
                raise SimulatorConfigError(
                    f"end must be timezone-aware (got naive {self.end.isoformat()}); "
                    "use datetime(..., tzinfo=UTC)"
                )
            start = self.end - timedelta(days=self.days)
            if _to_ms(start) < TS_MIN_MS:
                raise SimulatorConfigError(
                    f"end - days must not be before {TS_MIN_DATE} (got {start.isoformat()}): "
                    "move end later or use fewer days"
                )

    def resolved(self) -> SimulatorConfig:
        """This configuration with `end` fixed: now if unset, in UTC, to the millisecond."""
        end = datetime.now(UTC) if self.end is None else self.end.astimezone(UTC)
        end = end.replace(microsecond=end.microsecond // 1000 * 1000)
        return replace(self, end=end)

    @property
    def tag(self) -> str:
        """The event-id prefix: a hash of the seed and the sizes (not of `end`)."""
        text = (
            f"churn-sim|{self.seed}|{self.customers}|{self.days}|{self.existing_share}|"
            f"{self.activity_scale}|{self.churn_scale}|{self.hidden_risk}"
        )
        return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise SimulatorConfigError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise SimulatorConfigError(f"{name} must be >= {low} (got {value})")
    if value > high:
        raise SimulatorConfigError(f"{name} must be <= {high:,} (got {value})")


def _check_range(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise SimulatorConfigError(f"{name} must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise SimulatorConfigError(f"{name} must be in {interval} (got {value})")


class SimMessage(NamedTuple):
    """One message to produce.

    `expected_reason` is None for a valid event and the reason code validation
    must give for an injected malformed message; for those, `event_id`,
    `customer_id`, `event_type` and `ts_ms` are None.
    """

    key: bytes | None
    value: bytes | None
    event_id: str | None
    customer_id: str | None
    expected_reason: str | None
    event_type: str | None = None
    ts_ms: int | None = None


_new_message = partial(tuple.__new__, SimMessage)


@dataclass
class SimulationSummary:
    """What a simulation run produced."""

    topic: str
    messages_produced: int = 0
    events_valid_produced: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    customers: int = 0
    signups: int = 0
    churn_events: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    first_ts: str | None = None
    last_ts: str | None = None
    seconds: float = 0.0
    live: bool = False
    seed: int = 0

    @property
    def messages_per_second(self) -> float:
        return self.messages_produced / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["messages_per_second"] = round(self.messages_per_second, 1)
        return out


# --- The business ------------------------------------------------------------


@dataclass
class _Day:
    """One simulated day: its valid events (sorted by time) and malformed insertions."""

    day: int
    event_ids: list[str]
    customer_ids: list[str]
    event_types: list[str]
    ts_ms: np.ndarray
    tails: list[str] | None  # JSON after "ts" (value, attributes), for live formatting
    values: list[bytes] | None  # complete JSON, for batch
    type_counts: np.ndarray
    bad: list[_BadInsertion]


@dataclass(frozen=True)
class _BadInsertion:
    """A malformed message to insert among a day's valid ones."""

    position: int  # how many of the day's valid messages go before it
    reason: str  # the reason code validation must give it
    variant: int  # which way of breaking that rule (`malformed_message`)
    customer_id: str


@dataclass(frozen=True)
class _DayOutcome:
    """What one day did to each active customer: element i is customer `idx[i]`'s."""

    idx: np.ndarray  # positions in the state arrays of the customers active today
    is_new: np.ndarray  # signed up today
    start: np.ndarray  # fraction of the day their activity starts (signup time, else 0)
    end: np.ndarray  # ... and ends (cancellation time, else 1)
    log_e: np.ndarray
    failed: np.ndarray  # a charge failed today
    attempt: np.ndarray  # failed charges in a row, after today's
    tickets: np.ndarray  # support tickets opened today
    changed: np.ndarray  # changed plan today
    plan: np.ndarray  # plan after today's change
    cancel: np.ndarray  # cancelled today
    involuntary: np.ndarray  # ... because payments kept failing


@dataclass
class _Customers:
    """Per-customer state: element i of every array belongs to customer number i + 1."""

    # Fixed at signup.
    discount: np.ndarray
    channel: np.ndarray
    country: np.ndarray
    activity: np.ndarray  # hidden activity level
    card_risk: np.ndarray  # chance that a monthly charge fails
    frailty: np.ndarray  # hidden log-hazard offset (channel effect + noise)
    speed: np.ndarray  # fall of log-engagement per day while declining
    signup_day: np.ndarray  # day of subscription_started (0 for existing customers)
    true_signup: np.ndarray  # day the subscription really began (negative: before the window)
    signup_frac: np.ndarray  # time of day of subscription_started
    # Changing.
    plan: np.ndarray
    declining: np.ndarray
    log_e: np.ndarray  # log-engagement; 0 is the customer's own normal
    status: np.ndarray  # 0 not yet signed up, 1 active, 2 cancelled
    dunning: np.ndarray  # failed charges in a row
    retry_day: np.ndarray
    recent_failures: np.ndarray  # payment failures, decayed with a 14-day time constant
    recent_tickets: np.ndarray  # support tickets, likewise

    def extend(self, more: _Customers) -> None:
        for f in fields(self):
            setattr(self, f.name, np.concatenate([getattr(self, f.name), getattr(more, f.name)]))


class _Business:
    """Per-customer state arrays and the day step of the ground-truth model."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng([config.seed, 1])
        n = config.customers
        n_existing = int(round(n * config.existing_share))
        n_new = n - n_existing
        self.new_per_day = n_new / config.days
        # Signups grow over the window; customer numbers follow signup order.
        weights = np.exp(0.3 * np.arange(config.days) / config.days)
        signup_day = np.sort(self.rng.choice(config.days, size=n_new, p=weights / weights.sum()))
        self.pop = self._draw(n_existing, np.zeros(n_existing, dtype=np.int64), existing=True)
        self.pop.extend(self._draw(n_new, signup_day, existing=False))

    def _draw(self, k: int, signup_day: np.ndarray, *, existing: bool) -> _Customers:
        """`k` new customers who sign up on `signup_day` (existing: were subscribed before)."""
        rng = self.rng
        plan = rng.choice(len(PLANS), size=k, p=PLAN_WEIGHTS).astype(np.int8)
        discount = rng.choice(len(DISCOUNTS), size=k, p=DISCOUNT_WEIGHTS).astype(np.int8)
        channel = rng.choice(len(CHANNELS), size=k, p=CHANNEL_WEIGHTS).astype(np.int8)
        country = rng.choice(len(COUNTRIES), size=k, p=COUNTRY_WEIGHTS).astype(np.int8)
        activity = rng.lognormal(-0.5 * ACTIVITY_SIGMA**2, ACTIVITY_SIGMA, k) * PLAN_ACTIVITY[plan]
        card_risk = np.where(rng.random(k) < RISKY_CARD_SHARE, CARD_RISK_HIGH, CARD_RISK_LOW)
        frailty = rng.normal(0.0, self.config.hidden_risk, k) + CHANNEL_HAZARD[channel]
        speed = np.clip(
            rng.lognormal(np.log(DECLINE_SPEED), DECLINE_SPEED_SPREAD, k), *DECLINE_SPEED_RANGE
        )
        if existing:
            # A steady-state mix: most engaged, some already part-way into a decline.
            declining = rng.random(k) < INITIAL_DECLINING
            log_e = rng.normal(0.0, 0.2, k) - declining * rng.uniform(0.0, 2.0, k)
            true_signup = -rng.integers(NEW_CUSTOMER_DAYS, 1500, k)
            signup_frac = rng.uniform(0.0, 0.02, k)
        else:
            declining = rng.random(k) < FAILED_ONBOARDING
            speed = np.where(declining, speed * ONBOARDING_SPEEDUP, speed)
            log_e = rng.normal(0.0, 0.2, k)
            true_signup = signup_day.astype(np.int64)
            signup_frac = rng.uniform(0.0, 1.0, k)
        return _Customers(
            plan=plan,
            discount=discount,
            channel=channel,
            country=country,
            activity=activity,
            card_risk=card_risk,
            frailty=frailty,
            speed=speed,
            declining=declining,
            log_e=log_e,
            signup_day=signup_day.astype(np.int64),
            true_signup=true_signup.astype(np.int64),
            signup_frac=signup_frac,
            status=np.zeros(k, dtype=np.int8),
            dunning=np.zeros(k, dtype=np.int8),
            retry_day=np.full(k, -1, dtype=np.int64),
            recent_failures=np.zeros(k),
            recent_tickets=np.zeros(k),
        )

    def step(self, day: int) -> _DayOutcome:
        """Advance the state by one day; returns what happened to each active customer."""
        p = self.pop
        if day >= self.config.days:
            # After the window (live mode) the business keeps acquiring customers.
            k = int(self.rng.poisson(max(self.new_per_day, 0.004 * self.config.customers)))
            if k:
                p.extend(self._draw(k, np.full(k, day, dtype=np.int64), existing=False))
        rng = self.rng
        newly = (p.status == 0) & (p.signup_day == day)
        p.status[newly] = 1
        idx = np.flatnonzero(p.status == 1)
        n = idx.size
        is_new = newly[idx]
        start = np.where(is_new, p.signup_frac[idx], 0.0)

        # Engagement: declines start, stop and deepen; otherwise noise around 1.
        declining = p.declining[idx]
        u = rng.random(n)
        onset = ~declining & (u < DECLINE_ONSET)
        recover = declining & (u < DECLINE_RECOVERY)
        declining = ((declining | onset) & ~recover) | (declining & is_new)
        log_e = p.log_e[idx]
        drift = np.where(
            declining,
            log_e - p.speed[idx],
            ENGAGEMENT_RHO * log_e + rng.normal(0.0, ENGAGEMENT_NOISE, n),
        )
        log_e = np.where(is_new, log_e, np.maximum(drift, -6.0))
        p.declining[idx] = declining
        p.log_e[idx] = log_e

        # Billing: a charge every period from the true signup, retries while dunning.
        dunning = p.dunning[idx]
        due = ((day - p.true_signup[idx]) % BILLING_PERIOD_DAYS == 0) & (dunning == 0) & ~is_new
        retry = (dunning > 0) & (p.retry_day[idx] == day)
        fail_p = np.where(retry, RETRY_FAILURE, p.card_risk[idx])
        failed = (due | retry) & (rng.random(n) < fail_p)
        recovered = retry & ~failed
        dunning = np.where(failed, dunning + 1, np.where(recovered, 0, dunning)).astype(np.int8)
        p.dunning[idx] = dunning
        p.retry_day[idx] = np.where(failed, day + RETRY_DAYS, p.retry_day[idx])
        involuntary = dunning >= FAILURES_BEFORE_INVOLUNTARY_CHURN

        tickets = rng.poisson(
            TICKET_BASE * self.config.activity_scale
            + TICKET_DECLINING * declining
            + TICKET_AFTER_PAYMENT_FAILURE * failed
        )
        recent_failures = p.recent_failures[idx] * RECENT_DECAY + failed
        recent_tickets = p.recent_tickets[idx] * RECENT_DECAY + tickets
        p.recent_failures[idx] = recent_failures
        p.recent_tickets[idx] = recent_tickets

        plan = p.plan[idx]
        mrr = _MRR_TABLE[plan, p.discount[idx]]
        tenure = day - p.true_signup[idx]
        log_h = (
            np.log(HAZARD_BASE * self.config.churn_scale + 1e-300)
            + HAZARD_DISENGAGEMENT * np.maximum(-log_e, 0.0)
            + HAZARD_PAYMENT_FAILURES * recent_failures
            + HAZARD_TICKETS * recent_tickets
            + HAZARD_PRICE * np.log(mrr / REFERENCE_MRR)
            + HAZARD_NEW_CUSTOMER * (tenure < NEW_CUSTOMER_DAYS)
            + p.frailty[idx]
        )
        hazard = np.minimum(np.exp(log_h), HAZARD_CAP)
        cancel = involuntary | (rng.random(n) < -np.expm1(-hazard))

        # Plan changes: engaged customers upgrade, disengaged ones downgrade.
        u = rng.random(n)
        upgrade = ~cancel & (log_e > 0.15) & (plan < len(PLANS) - 1) & (u < UPGRADE_RATE)
        downgrade = ~cancel & (log_e < -0.4) & (plan > 0) & (u > 1.0 - DOWNGRADE_RATE)
        plan = (plan + upgrade - downgrade).astype(np.int8)
        p.plan[idx] = plan

        end = np.where(cancel, start + (1.0 - start) * rng.uniform(0.05, 1.0, n), 1.0)
        p.status[idx[cancel]] = 2
        p.dunning[idx[cancel]] = 0
        return _DayOutcome(
            idx=idx,
            is_new=is_new,
            start=start,
            end=end,
            log_e=log_e,
            failed=failed,
            attempt=dunning,
            tickets=tickets,
            changed=upgrade | downgrade,
            plan=plan,
            cancel=cancel,
            involuntary=involuntary,
        )

    def events(self, day: int, day_start_ms: int, s: _DayOutcome) -> pl.DataFrame:
        """The day's events as columns (customer, ts_ms, type, value, attribute code), sorted."""
        p = self.pop
        rng = np.random.default_rng([self.config.seed, 2, day])
        idx, start, end = s.idx, s.start, s.end
        span = end - start
        weekday = datetime.fromtimestamp(day_start_ms / 1000 + 43_200, UTC).weekday()
        level = (
            p.activity[idx]
            * np.exp(s.log_e)
            * span
            * (WEEKEND_FACTOR if weekday >= 5 else 1.0)
            * self.config.activity_scale
        )
        counts = rng.poisson(level[:, None] * ACTIVITY_RATES[None, :])
        # Purchases follow engagement, not the customer's activity level.
        counts[:, 3] = rng.poisson(
            ACTIVITY_RATES[3] * np.exp(s.log_e) * span * self.config.activity_scale
        )

        pos_parts: list[np.ndarray] = []  # position in `idx` of each event
        type_parts: list[np.ndarray] = []
        for j, code in enumerate((T_LOGIN, T_SESSION, T_FEATURE, T_PURCHASE)):
            pos = np.repeat(np.arange(idx.size), counts[:, j])
            pos_parts.append(pos)
            type_parts.append(np.full(pos.size, code, dtype=np.int8))
        pos = np.repeat(np.arange(idx.size), s.tickets)
        pos_parts.append(pos)
        type_parts.append(np.full(pos.size, T_TICKET, dtype=np.int8))
        for mask, code in ((s.failed, T_PAYMENT), (s.changed, T_CHANGED)):
            pos = np.flatnonzero(mask)
            pos_parts.append(pos)
            type_parts.append(np.full(pos.size, code, dtype=np.int8))
        activity_pos = np.concatenate(pos_parts)
        activity_type = np.concatenate(type_parts)
        frac = start[activity_pos] + span[activity_pos] * rng.random(activity_pos.size)

        started = np.flatnonzero(s.is_new)
        cancelled = np.flatnonzero(s.cancel)
        pos = np.concatenate([started, activity_pos, cancelled])
        etype = np.concatenate(
            [
                np.full(started.size, T_STARTED, dtype=np.int8),
                activity_type,
                np.full(cancelled.size, T_CANCEL, dtype=np.int8),
            ]
        )
        frac = np.concatenate([start[started], frac, end[cancelled]])
        cust = idx[pos]
        ts = day_start_ms + np.minimum((frac * DAY_MS).astype(np.int64), DAY_MS - 1)
        rank = np.where(etype == T_STARTED, 0, np.where(etype == T_CANCEL, 2, 1)).astype(np.int8)

        m = pos.size
        value = np.full(m, np.nan)
        attr = np.zeros(m, dtype=np.int32)
        sel = etype == T_LOGIN
        attr[sel] = _ATTR_OFFSET["device"] + rng.choice(len(DEVICES), sel.sum(), p=DEVICE_WEIGHTS)
        sel = etype == T_SESSION
        value[sel] = np.round(
            rng.lognormal(np.log(420.0), 0.9, sel.sum()) * np.exp(0.4 * s.log_e[pos[sel]])
        )
        sel = etype == T_FEATURE
        attr[sel] = _ATTR_OFFSET["feature"] + rng.choice(
            len(FEATURES), sel.sum(), p=FEATURE_WEIGHTS
        )
        sel = etype == T_PURCHASE
        value[sel] = np.round(rng.lognormal(np.log(25.0), 0.8, sel.sum()), 2)
        sel = etype == T_TICKET
        category = rng.choice(len(TICKET_CATEGORIES), sel.sum(), p=TICKET_WEIGHTS)
        category = np.where(s.failed[pos[sel]], 0, category)  # failed payments → billing
        attr[sel] = _ATTR_OFFSET["ticket"] + category
        sel = etype == T_PAYMENT
        cust_sel = cust[sel]
        value[sel] = _MRR_TABLE[p.plan[cust_sel], p.discount[cust_sel]]
        attr[sel] = _ATTR_OFFSET["attempt"] + s.attempt[pos[sel]] - 1
        sel = etype == T_CHANGED
        cust_sel = cust[sel]
        attr[sel] = (
            _ATTR_OFFSET["changed"] + p.plan[cust_sel] * len(DISCOUNTS) + p.discount[cust_sel]
        )
        sel = etype == T_STARTED
        cust_sel = cust[sel]
        attr[sel] = _ATTR_OFFSET["started"] + (
            (
                (p.plan[cust_sel].astype(np.int32) * len(DISCOUNTS) + p.discount[cust_sel])
                * len(CHANNELS)
                + p.channel[cust_sel]
            )
            * len(COUNTRIES)
            + p.country[cust_sel]
        )
        sel = etype == T_CANCEL
        attr[sel] = _ATTR_OFFSET["cancel"] + s.involuntary[pos[sel]]

        frame = pl.DataFrame(
            {
                "c": cust.astype(np.int64),
                "ts": ts,
                "r": rank,
                "t": etype,
                "v": value,
                "a": attr,
            }
        )
        return frame.sort(["ts", "c", "r"], maintain_order=True)


def _customer_id_expr() -> pl.Expr:
    return pl.lit("c") + (pl.col("c") + 1).cast(pl.String).str.zfill(7)


def _tail_expr() -> pl.Expr:
    value = (
        pl.when(pl.col("v").is_nan())
        .then(pl.lit(""))
        .otherwise(pl.lit(',"value":') + pl.col("v").cast(pl.String))
    )
    return pl.concat_str([value, pl.lit(_ATTR_SERIES).gather(pl.col("a"))])


def _ts_string_expr() -> pl.Expr:
    return pl.from_epoch(pl.col("ts"), time_unit="ms").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")


def format_ts(ts_ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-10-01T12:22:22.123Z."""
    dt = datetime.fromtimestamp(ts_ms // 1000, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ts_ms % 1000:03d}Z"


def _to_ms(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


class _BadInjector:
    """Decides where malformed messages go and which reason each one has."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.fraction = config.bad_fraction
        self.rng = np.random.default_rng([config.seed, 3])
        self.valid = 0
        self.bad = 0

    def plan(self, customer_ids: list[str]) -> list[_BadInsertion]:
        n = len(customer_ids)
        self.valid += n
        if self.fraction <= 0 or n == 0:
            return []
        # Exactly floor(F/(1-F) · valid so far) bad messages so far: F of all messages.
        target = int(self.valid * self.fraction / (1.0 - self.fraction))
        k = target - self.bad
        if k <= 0:
            return []
        positions = np.sort(self.rng.integers(0, n + 1, k))
        who = self.rng.integers(0, n, k)
        plan = []
        for j in range(k):
            number = self.bad + j
            reasons = Reason.ALL
            reason = reasons[number % len(reasons)]
            plan.append(
                _BadInsertion(
                    int(positions[j]), reason, number // len(reasons), customer_ids[who[j]]
                )
            )
        self.bad = target
        return plan


def malformed_message(reason: str, variant: int, customer_id: str, ts: str, event_id: str) -> bytes:
    """A message value that validation rejects with exactly `reason`.

    `ts` must be a valid, in-range RFC 3339 time (other rules are checked after
    the time range); `variant` picks among several ways to break the rule.
    """
    base = {"event_id": event_id, "customer_id": customer_id, "event_type": "login", "ts": ts}
    encode = msgspec.json.encode
    v = variant
    if reason == Reason.EMPTY:
        return b""
    if reason == Reason.TOO_LARGE:
        return encode({**base, "note": "x" * DEFAULT_MAX_MESSAGE_BYTES})
    if reason == Reason.INVALID_UTF8:
        return encode(base).replace(b'"login"', b'"log\xffin"')
    if reason == Reason.INVALID_JSON:
        raw = encode(base)
        return (raw[: len(raw) // 2], raw.replace(b":", b"=", 1), b"{'event_id': 1}")[v % 3]
    if reason == Reason.NOT_AN_OBJECT:
        return (encode([base]), b'"login"', b"42", b"null")[v % 4]
    if reason == Reason.MISSING_FIELD:
        missing = ("ts", "event_type", "customer_id", "event_id")[v % 4]
        return encode({k: x for k, x in base.items() if k != missing})
    if reason == Reason.BAD_TYPE:
        wrong = ({"value": "12.50"}, {"event_id": 12345}, {"event_type": ["login"]})[v % 3]
        return encode({**base, **wrong})
    if reason == Reason.BAD_EVENT_ID:
        wrong = ("", "x" * (ID_MAX_LENGTH + 1), "evt\n1")[v % 3]
        return encode({**base, "event_id": wrong})
    if reason == Reason.BAD_CUSTOMER_ID:
        wrong = ("", "c" * (ID_MAX_LENGTH + 1), customer_id + "\x00")[v % 3]
        return encode({**base, "customer_id": wrong})
    if reason == Reason.BAD_EVENT_TYPE:
        wrong = ("Login", "page view", "9lives", "")[v % 4]
        return encode({**base, "event_type": wrong})
    if reason == Reason.BAD_TS:
        wrong = ("yesterday", "2026-13-45T00:00:00Z", ts.rstrip("Z"))[v % 3]
        return encode({**base, "ts": wrong})
    if reason == Reason.TS_OUT_OF_RANGE:
        wrong = ("1979-12-31T23:59:59.000Z", "2199-01-01T00:00:00.000Z", 0)[v % 3]
        return encode({**base, "ts": wrong})
    if reason == Reason.BAD_VALUE:
        number = (b"1e999", b"-1e999")[v % 2]
        return encode({**base, "value": 1.5}).replace(b'"value":1.5', b'"value":' + number)
    if reason == Reason.BAD_ATTRIBUTES:
        wrong = ({"plan": {"name": "pro"}}, {"tags": ["a", "b"]}, {"note": "x" * 2000})[v % 3]
        return encode({**base, "attributes": wrong})
    raise ValueError(f"unknown reason code {reason!r}; expected one of {Reason.ALL}")


def _bad_sim_message(tag: str, bad: _BadInsertion, ts: str) -> SimMessage:
    reason, variant, customer_id = bad.reason, bad.variant, bad.customer_id
    number = variant * len(Reason.ALL) + Reason.ALL.index(reason)
    value = malformed_message(reason, variant, customer_id, ts, f"{tag}-bad-{number}")
    return SimMessage(customer_id.encode(), value, None, None, reason)


def _iter_days(config: SimulatorConfig, *, live: bool = False) -> Iterator[_Day]:
    """The days of a resolved configuration: the window, or (live) what follows it."""
    business = _Business(config)
    injector = _BadInjector(config)
    window_start = _to_ms(config.end) - config.days * DAY_MS
    tag = config.tag
    day = 0
    if live:
        for day in range(config.days):  # the history is simulated, not emitted
            business.step(day)
        day = config.days
    while live or day < config.days:
        day_start = window_start + day * DAY_MS
        state = business.step(day)
        frame = business.events(day, day_start, state)
        prefix = f"{tag}-{day:05d}-"
        columns = frame.select(
            event_id=pl.lit(prefix) + pl.int_range(pl.len()).cast(pl.String),
            customer_id=_customer_id_expr(),
            event_type=pl.lit(_TYPE_SERIES).gather(pl.col("t")),
            tail=_tail_expr(),
            ts_str=_ts_string_expr(),
        )
        customer_ids = columns["customer_id"].to_list()
        if live:
            tails, values = columns["tail"].to_list(), None
        else:
            values = (
                columns.select(
                    pl.concat_str(
                        [
                            pl.lit('{"event_id":"'),
                            pl.col("event_id"),
                            pl.lit('","customer_id":"'),
                            pl.col("customer_id"),
                            pl.lit('","event_type":"'),
                            pl.col("event_type"),
                            pl.lit('","ts":"'),
                            pl.col("ts_str"),
                            pl.lit('"'),
                            pl.col("tail"),
                            pl.lit("}"),
                        ]
                    ).cast(pl.Binary)
                )
                .to_series()
                .to_list()
            )
            tails = None
        yield _Day(
            day=day,
            event_ids=columns["event_id"].to_list(),
            customer_ids=customer_ids,
            event_types=columns["event_type"].to_list(),
            ts_ms=frame["ts"].to_numpy(),
            tails=tails,
            values=values,
            type_counts=np.bincount(frame["t"].to_numpy(), minlength=len(EVENT_TYPES)),
            bad=injector.plan(customer_ids),
        )
        day += 1


def _day_messages(day: _Day, tag: str) -> Iterator[SimMessage]:
    """The batch messages of one day, malformed ones inserted where planned."""
    keys = [c.encode() for c in day.customer_ids]
    valid = map(
        _new_message,
        zip(
            keys,
            day.values,
            day.event_ids,
            day.customer_ids,
            itertools.repeat(None, len(keys)),
            day.event_types,
            day.ts_ms.tolist(),
            strict=True,
        ),
    )
    if not day.bad:
        yield from valid
        return
    done = 0
    n = len(day.event_ids)
    for bad in day.bad:
        yield from itertools.islice(valid, bad.position - done)
        done = bad.position
        template = day.ts_ms[min(bad.position, n - 1)] if n else 0
        yield _bad_sim_message(tag, bad, format_ts(int(template)))
    yield from valid


def simulate(config: SimulatorConfig) -> Iterator[SimMessage]:
    """Every message of the simulation, in order; `end` is resolved once, at the call."""
    return _simulate(config.resolved())


def _simulate(config: SimulatorConfig) -> Iterator[SimMessage]:
    tag = config.tag
    for day in _iter_days(config):
        yield from _day_messages(day, tag)


def live_messages(
    config: SimulatorConfig, clock: Callable[[], int] | None = None
) -> Iterator[SimMessage]:
    """The business after the window, without end; each event's ts is `clock()` (epoch ms).

    The content (ids, customers, types, values, attributes, malformed messages)
    is fixed by the configuration; only the times follow the clock.
    """
    return _live_messages(config.resolved(), clock or _wall_clock_ms)


def _live_messages(config: SimulatorConfig, clock: Callable[[], int]) -> Iterator[SimMessage]:
    tag = config.tag
    template = '{"event_id":"%s","customer_id":"%s","event_type":"%s","ts":"%s"%s}'
    for day in _iter_days(config, live=True):
        bad = iter(day.bad)
        next_bad = next(bad, None)
        rows = zip(day.event_ids, day.customer_ids, day.event_types, day.tails, strict=True)
        for position, (event_id, customer_id, event_type, tail) in enumerate(rows):
            while next_bad is not None and next_bad.position == position:
                yield _bad_sim_message(tag, next_bad, format_ts(clock()))
                next_bad = next(bad, None)
            ts_ms = clock()
            value = template % (event_id, customer_id, event_type, format_ts(ts_ms), tail)
            yield SimMessage(
                customer_id.encode(), value.encode(), event_id, customer_id, None, event_type, ts_ms
            )
        while next_bad is not None:
            yield _bad_sim_message(tag, next_bad, format_ts(clock()))
            next_bad = next(bad, None)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# --- Producing ---------------------------------------------------------------


class _Tally:
    """Counts what was produced, message by message or day by day."""

    def __init__(self, summary: SimulationSummary) -> None:
        self.summary = summary
        self.types: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self.customers: set[str] = set()
        self.first: int | None = None
        self.last: int | None = None

    def add(self, message: SimMessage) -> None:
        s = self.summary
        s.messages_produced += 1
        if message.expected_reason is not None:
            self.bad[message.expected_reason] += 1
            return
        s.events_valid_produced += 1
        self.types[message.event_type] += 1
        self.customers.add(message.customer_id)
        if self.first is None:
            self.first = message.ts_ms
        self.last = message.ts_ms

    def add_day(self, day: _Day) -> None:
        s = self.summary
        n = len(day.event_ids)
        s.messages_produced += n + len(day.bad)
        s.events_valid_produced += n
        for bad in day.bad:
            self.bad[bad.reason] += 1
        for code, count in enumerate(day.type_counts.tolist()):
            if count:
                self.types[EVENT_TYPES[code]] += count
        if n:
            if self.first is None:
                self.first = int(day.ts_ms[0])
            self.last = int(day.ts_ms[-1])

    def finish(self, started: float, customers: int | None = None) -> SimulationSummary:
        s = self.summary
        s.seconds = time.perf_counter() - started
        s.bad_by_reason = {r: self.bad[r] for r in Reason.ALL if self.bad[r]}
        s.events_by_type = dict(sorted(self.types.items()))
        s.signups = self.types[SUBSCRIPTION_STARTED]
        s.churn_events = self.types[SUBSCRIPTION_CANCELLED]
        s.customers = len(self.customers) if customers is None else customers
        s.first_ts = None if self.first is None else format_ts(self.first)
        s.last_ts = None if self.last is None else format_ts(self.last)
        return s


def _progress_bar(progress: bool, **kwargs: object):
    from tqdm import tqdm

    # disable=None turns the bar off when stderr is not a terminal.
    return tqdm(file=sys.stderr, disable=None if progress else True, **kwargs)


def produce_simulation(
    settings: KafkaSettings,
    topic: str = EVENTS_TOPIC,
    config: SimulatorConfig | None = None,
    progress: bool = False,
    partitions: int = DEFAULT_PARTITIONS,
) -> SimulationSummary:
    """Simulate the window and produce every message to `topic` (created if missing)."""
    config = (config or SimulatorConfig()).resolved()
    ensure_topic(settings, topic, partitions=partitions)
    tally = _Tally(SimulationSummary(topic=topic, seed=config.seed))
    started = time.perf_counter()
    tag = config.tag
    with (
        EventProducer(settings) as producer,
        _progress_bar(progress, total=config.days, unit="day", desc="simulate") as bar,
    ):
        send = producer.send
        for day in _iter_days(config):
            for message in _day_messages(day, tag):
                send(topic, message.value, message.key)
            producer.poll(0)
            tally.add_day(day)
            bar.update(1)
            bar.set_postfix(messages=tally.summary.messages_produced, refresh=False)
    # Every customer that emits anything starts with subscription_started.
    return tally.finish(started, customers=tally.types[SUBSCRIPTION_STARTED])


def run_live(
    settings: KafkaSettings,
    topic: str = EVENTS_TOPIC,
    config: SimulatorConfig | None = None,
    rate: float = 50.0,
    stop: threading.Event | None = None,
    max_events: int | None = None,
    progress: bool = False,
    partitions: int = DEFAULT_PARTITIONS,
    tick: float = 0.05,
    producer_config: dict[str, object] | None = None,
) -> SimulationSummary:
    """Trickle the business to `topic` at about `rate` messages/s with ts = now.

    Stops when `stop` is set, after `max_events` messages, or on Ctrl-C; the
    summary counts what was produced (and flushed) until then. While the
    broker is down, messages wait in the producer's queue (the outage is
    logged, naming the address) and go out when it is back; if it stays away
    longer than `message.timeout.ms` (`producer_config`), `ProduceError` says
    how many were not delivered.
    """
    if not rate > 0:
        raise SimulatorConfigError(f"rate must be > 0 messages/s (got {rate})")
    if max_events is not None and max_events < 1:
        raise SimulatorConfigError(f"max_events must be >= 1 (got {max_events})")
    config = (config or SimulatorConfig()).resolved()
    ensure_topic(settings, topic, partitions=partitions)
    stop = stop or threading.Event()
    tally = _Tally(SimulationSummary(topic=topic, live=True, seed=config.seed))
    messages = _live_messages(config, _wall_clock_ms)
    # Low-latency producer settings: a live stream is watched, not bulk-loaded.
    with (
        EventProducer(settings, **{"linger.ms": 5, **(producer_config or {})}) as producer,
        _progress_bar(progress, total=max_events, unit="msg", desc="live") as bar,
    ):
        began = started = time.perf_counter()
        produced = 0
        try:
            while not stop.is_set():
                elapsed = time.perf_counter() - started
                due = int(elapsed * rate) + 1 - produced
                if due > rate:
                    # More than a second behind (a stall): drop the backlog, keep the pace.
                    started = time.perf_counter() - produced / rate
                    due = 1
                if max_events is not None:
                    due = min(due, max_events - produced)
                if due > 0:
                    for message in itertools.islice(messages, due):
                        producer.send(topic, message.value, message.key)
                        tally.add(message)
                    produced += due
                    producer.poll(0)
                    bar.update(due)
                if max_events is not None and produced >= max_events:
                    break
                # Sleep until the next message is due, in ticks of at least `tick`.
                stop.wait(max(tick, produced / rate - (time.perf_counter() - started)))
        except KeyboardInterrupt:
            pass
    return tally.finish(began)
