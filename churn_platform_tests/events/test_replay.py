"""Replay: a user's CSV / JSON Lines / Parquet rows become contract events in the topic."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import msgspec
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churn_platform.cli import main
from churn_platform.events.contract import Event, Reason, Rejection
from churn_platform.events.replay import (
    MappingError,
    ReplayError,
    ReplayInput,
    ReplayMapping,
    ReplayProduceError,
    SubscriptionMapping,
    iter_messages,
    normalize_event_type,
    parse_separator,
    replay_file,
    rows_to_messages,
)
from churn_platform.events.replay import run as replay_run
from churn_platform.events.replay.messages import MessageBuilder, bind
from churn_platform.events.replay.producing import prefetched
from churn_platform.events.validation import validate
from churn_platform.kafka.broker import EmbeddedBroker
from churn_platform.kafka.config import KafkaSettings
from churn_platform.testing.public_data import cdnow_mapping, cdnow_master_path
from churn_platform.testing.topics import topic_messages

NOW = 1_790_000_000_000  # 2026-09-21, a fixed clock for the future-ts rule

ACCOUNT_MAPPING = ReplayMapping(
    customer_id_column="account_id",
    event_type_column="action",
    ts_column="event_time",
    value_column="amount",
    attribute_columns=("plan", "zip", "seats"),
)


def decoded(messages) -> list[dict]:
    """Every message value as a dict, after checking it passes the contract."""
    out = []
    for key, value in messages:
        result = validate(value, now=NOW)
        assert isinstance(result, Event), (value, result)
        assert key == result.customer_id.encode()
        out.append(json.loads(value))
    return out


def all_messages(path, mapping, **kwargs) -> list[tuple[bytes | None, bytes]]:
    return [m for batch in iter_messages(path, mapping, **kwargs) for m in batch]


def write_accounts_csv(path, rows: int = 4) -> None:
    path.write_text(
        "account_id,action,event_time,amount,plan,zip,seats\n"
        + "".join(
            f"acct-{i % 3},{['Login', 'Page View', 'purchase', 'Support-Ticket'][i % 4]},"
            f"{1_735_689_600 + i * 60},{i * 1.5},pro,0{i}123,{i + 1}\n"
            for i in range(rows)
        )
    )


# --- pure mapping ----------------------------------------------------------------


def test_csv_with_renamed_columns_and_epoch_seconds(tmp_path):
    path = tmp_path / "accounts.csv"
    write_accounts_csv(path)

    events = decoded(all_messages(path, ACCOUNT_MAPPING))

    assert [e["customer_id"] for e in events] == ["acct-0", "acct-1", "acct-2", "acct-0"]
    assert [e["event_type"] for e in events] == ["login", "page_view", "purchase", "support_ticket"]
    assert events[0]["ts"] == "2025-01-01T00:00:00.000Z"
    assert events[3]["ts"] == "2025-01-01T00:03:00.000Z"
    assert [e.get("value") for e in events] == [0.0, 1.5, 3.0, 4.5]
    # CSV text: whole numbers become numbers, but leading zeros (zip codes) stay text
    assert events[1]["attributes"] == {"plan": "pro", "zip": "01123", "seats": 2}


def test_csv_numbers_that_would_lose_digits_stay_text(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "customer_id,event_type,ts,account_no,ratio,code\n"
        "c1,login,2025-01-01T00:00:00Z,12345678901234567890,0.5,7\n"
        "c2,login,2025-01-01T00:00:00Z,12345678901234567891,1e3,x7\n"
    )
    events = decoded(all_messages(path, ReplayMapping(all_attributes=True)))
    assert events[0]["attributes"] == {
        "account_no": "12345678901234567890",
        "ratio": 0.5,
        "code": "7",
    }
    assert events[1]["attributes"]["ratio"] == 1000.0


def test_jsonl_with_rfc3339_offsets_naive_times_and_epoch_ms(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [
        {"customer_id": "c1", "event_type": "login", "ts": "2025-03-01T10:00:00+02:00"},
        {"customer_id": "c1", "event_type": "login", "ts": "2025-03-01T10:00:00.5Z"},
        {"customer_id": "c2", "event_type": "login", "ts": "2025-03-01 10:00:00"},
        {"customer_id": "c2", "event_type": "login", "ts": 1_740_823_200_250},
        {"customer_id": "c3", "event_type": "login", "ts": "2025-07-01T12:00:00"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")

    berlin = ReplayMapping(ts_timezone="Europe/Berlin")
    events = decoded(all_messages(path, berlin))

    assert [e["ts"] for e in events] == [
        "2025-03-01T08:00:00.000Z",  # the offset wins over --ts-timezone
        "2025-03-01T10:00:00.500Z",
        "2025-03-01T09:00:00.000Z",  # naive: Berlin in winter is UTC+1
        "2025-03-01T10:00:00.250Z",  # epoch milliseconds, by magnitude
        "2025-07-01T10:00:00.000Z",  # naive: Berlin in summer is UTC+2
    ]


def test_parquet_with_datetime_columns(tmp_path):
    path = tmp_path / "events.parquet"
    new_york = ZoneInfo("America/New_York")
    pl.DataFrame(
        {
            "customer_id": [101, 102, 103],  # integer ids become text
            "event_type": ["login", "logout", "login"],
            "ts": pl.Series(
                [datetime(2025, 6, 1, 8, 0, tzinfo=new_york)] * 3,
                dtype=pl.Datetime("us", "America/New_York"),
            ),
            "seen": [datetime(2025, 6, 1, 1, 2, 3, 456789)] * 3,
            "day": [date(2025, 6, 1)] * 3,
        }
    ).write_parquet(path)

    aware = decoded(all_messages(path, ReplayMapping()))
    naive = decoded(all_messages(path, ReplayMapping(ts_column="seen")))
    dates = decoded(all_messages(path, ReplayMapping(ts_column="day", ts_timezone="Asia/Tokyo")))

    assert [e["customer_id"] for e in aware] == ["101", "102", "103"]
    assert aware[0]["ts"] == "2025-06-01T12:00:00.000Z"
    assert naive[0]["ts"] == "2025-06-01T01:02:03.456Z"
    assert dates[0]["ts"] == "2025-05-31T15:00:00.000Z"


def test_numeric_timestamp_units_by_magnitude_and_forced():
    frame = pl.DataFrame(
        {
            "customer_id": ["c"] * 4,
            "event_type": ["login"] * 4,
            "ts": [
                1_735_689_600,
                1_735_689_600_123,
                1_735_689_600_123_456,
                1_735_689_600_123_456_789,
            ],
        }
    )
    events = decoded(rows_to_messages(frame, ReplayMapping()))
    assert [e["ts"] for e in events] == ["2025-01-01T00:00:00.000Z"] + [
        "2025-01-01T00:00:00.123Z"
    ] * 3

    # forcing the unit: seconds read as milliseconds land in 1970, out of range
    result = validate(rows_to_messages(frame.head(1), ReplayMapping(ts_unit="ms"))[0][1], now=NOW)
    assert isinstance(result, Rejection) and result.reason == Reason.TS_OUT_OF_RANGE


def test_a_partitioned_parquet_directory_and_a_glob(tmp_path):
    root = tmp_path / "lake"
    for region in ("eu", "us"):
        (root / f"region={region}").mkdir(parents=True)
        pl.DataFrame(
            {
                "customer_id": [f"{region}-1", f"{region}-2"],
                "event_type": ["login", "login"],
                "ts": ["2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"],
            }
        ).write_parquet(root / f"region={region}" / "part-0.parquet")
    (root / "_SUCCESS").write_text("")

    mapping = ReplayMapping(attribute_columns=("region",))
    events = decoded(all_messages(root, mapping))
    assert [(e["customer_id"], e["attributes"]["region"]) for e in events] == [
        ("eu-1", "eu"),
        ("eu-2", "eu"),
        ("us-1", "us"),
        ("us-2", "us"),
    ]
    assert len({e["event_id"] for e in events}) == 4  # same file name, other directory
    globbed = decoded(all_messages(str(root / "region=us" / "*.parquet"), ReplayMapping()))
    assert [e["customer_id"] for e in globbed] == ["us-1", "us-2"]
    assert len(all_messages(root, mapping, limit=3)) == 3


def test_limit_stops_a_json_lines_file_early(tmp_path):
    path = tmp_path / "events.ndjson"
    line = {"customer_id": "c", "event_type": "login", "ts": "2025-01-01T00:00:00Z"}
    path.write_text("".join(json.dumps(line) + "\n" for _ in range(50)))
    assert len(all_messages(path, ReplayMapping(), limit=7)) == 7


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("login", "login"),
        ("Page View", "page_view"),
        ("Sign-Up!", "sign_up"),
        ("checkout.completed", "checkout_completed"),
        ("2FA enabled", "e_2fa_enabled"),
        ("_private", "private"),
        ("Bestellung-Übermittelt", "bestellung_ubermittelt"),
        ("x" * 80, "x" * 64),
        ("!!!", "!!!"),  # nothing left: kept, so the contract check rejects it
    ],
)
def test_event_type_normalisation(raw, expected):
    assert normalize_event_type(raw) == expected


def test_event_types_are_renamed_and_a_fixed_type_fills_every_row():
    frame = pl.DataFrame(
        {"customer_id": ["a", "b", "c"], "kind": ["Page View", "login", "!!!"], "ts": [1.75e9] * 3}
    )
    values = [
        json.loads(v) for _, v in rows_to_messages(frame, ReplayMapping(event_type_column="kind"))
    ]
    assert [v["event_type"] for v in values] == ["page_view", "login", "!!!"]
    assert validate(json.dumps(values[2]).encode(), now=NOW).reason == Reason.BAD_EVENT_TYPE

    fixed = decoded(rows_to_messages(frame, ReplayMapping(event_type="Page View")))
    assert {e["event_type"] for e in fixed} == {"page_view"}


def test_derived_event_ids_are_stable_across_runs_and_differ_per_file(tmp_path):
    first = tmp_path / "a.csv"
    write_accounts_csv(first, rows=250)
    second = tmp_path / "b.csv"
    second.write_bytes(first.read_bytes())

    run_1 = all_messages(first, ACCOUNT_MAPPING, batch_rows=100)
    run_2 = all_messages(first, ACCOUNT_MAPPING, batch_rows=7)  # batching does not matter
    other = all_messages(second, ACCOUNT_MAPPING)

    assert run_1 == run_2
    ids = [e["event_id"] for e in decoded(run_1)]
    assert len(set(ids)) == 250
    other_ids = {e["event_id"] for e in decoded(other)}
    assert not other_ids & set(ids)


def test_event_id_column_is_used_and_its_nulls_get_derived_ids():
    frame = pl.DataFrame(
        {
            "customer_id": ["a", "b"],
            "event_type": ["login", "login"],
            "ts": ["2025-01-01T00:00:00Z"] * 2,
            "event_id": ["evt-1", None],
        }
    )
    ids = [e["event_id"] for e in decoded(rows_to_messages(frame, ReplayMapping(), source="x"))]
    assert ids[0] == "evt-1"
    assert ids[1].endswith("-1") and ids[1] != "evt-1"


def test_attributes_all_unmapped_columns_nulls_omitted_and_types_kept():
    frame = pl.DataFrame(
        {
            "customer_id": ["a", "b"],
            "event_type": ["purchase", "purchase"],
            "ts": ["2025-01-01T00:00:00Z"] * 2,
            "price": [9.5, float("nan")],  # NaN is missing
            "qty": [2, None],
            "gift": [True, False],
            "tags": [["x", "y"], None],
            "note": ['he said "hi"\\\n\tok', None],
        }
    )
    events = decoded(rows_to_messages(frame, ReplayMapping(all_attributes=True)))
    assert events[0]["attributes"] == {
        "price": 9.5,
        "qty": 2,
        "gift": "true",
        "tags": '["x","y"]',
        "note": 'he said "hi"\\\n\tok',
    }
    assert events[1]["attributes"] == {"gift": "false"}

    none = decoded(rows_to_messages(frame, ReplayMapping()))
    assert all("attributes" not in e for e in none)


def test_text_needing_json_escapes_survives():
    customer = 'Zoë "the" \\ customer'
    frame = pl.DataFrame(
        {"customer_id": [customer], "event_type": ["login"], "ts": ["2025-01-01T00:00:00Z"]}
    )
    [(key, value)] = rows_to_messages(frame, ReplayMapping())
    assert key == customer.encode()
    assert validate(value, now=NOW).customer_id == customer


def test_values_that_cannot_be_read_are_kept_for_the_contract_check():
    frame = pl.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "event_type": ["purchase"] * 4,
            "ts": ["2025-01-01T00:00:00Z", "yesterday", "2025-01-01T00:00:00Z", None],
            "amount": ["12.5", "12.5", "lots", "1"],
        }
    )
    messages = rows_to_messages(frame, ReplayMapping(value_column="amount"))
    results = [validate(v, now=NOW) for _, v in messages]
    assert isinstance(results[0], Event) and results[0].value == 12.5
    assert results[1].reason == Reason.BAD_TS and b'"ts":"yesterday"' in messages[1][1]
    assert results[2].reason == Reason.BAD_TYPE and b'"value":"lots"' in messages[2][1]
    assert results[3].reason == Reason.MISSING_FIELD


# --- subscriptions ---------------------------------------------------------------


def test_subscription_rows_become_lifecycle_events(tmp_path):
    path = tmp_path / "subscriptions.csv"
    path.write_text(
        "account,begin,finish,tier,monthly\n"
        "a1,2024-01-15,2024-09-30T12:00:00Z,pro,49.5\n"
        "a2,2024-03-01,,basic,9\n"
    )
    mapping = SubscriptionMapping(
        customer_id_column="account",
        start_column="begin",
        end_column="finish",
        plan_column="tier",
        mrr_column="monthly",
    )
    events = decoded(all_messages(path, mapping))

    assert [(e["customer_id"], e["event_type"], e["ts"]) for e in events] == [
        ("a1", "subscription_started", "2024-01-15T00:00:00.000Z"),
        ("a1", "subscription_cancelled", "2024-09-30T12:00:00.000Z"),
        ("a2", "subscription_started", "2024-03-01T00:00:00.000Z"),  # open: no cancel
    ]
    assert events[0]["attributes"] == {"plan": "pro", "mrr": 49.5}
    assert events[1]["attributes"] == {"plan": "pro"}
    assert events[2]["attributes"] == {"plan": "basic", "mrr": 9}
    assert len({e["event_id"] for e in events}) == 3
    assert all_messages(path, mapping) == all_messages(path, mapping)


def test_subscriptions_use_default_optional_columns_when_present():
    frame = pl.DataFrame(
        {
            "customer_id": ["a"],
            "started_at": [datetime(2024, 1, 1, tzinfo=UTC)],
            "ended_at": [""],  # JSON exports write an open end as ""
            "channel": ["ads"],
            "country": ["DE"],
        }
    )
    events = decoded(rows_to_messages(frame, SubscriptionMapping()))
    assert len(events) == 1
    assert events[0]["attributes"] == {"channel": "ads", "country": "DE"}


# --- errors ----------------------------------------------------------------------


def test_missing_mapped_column_names_the_option_and_the_columns(tmp_path):
    path = tmp_path / "accounts.csv"
    write_accounts_csv(path)
    mapping = ReplayMapping(customer_id_column="account_id", event_type_column="action")

    with pytest.raises(MappingError) as error:
        # fails on the file's columns, before the (unreachable) cluster is contacted
        replay_file(KafkaSettings("127.0.0.1:1"), "t", path, mapping)
    message = str(error.value)
    assert "--ts-column 'ts'" in message
    assert "account_id, action, event_time, amount, plan, zip, seats" in message

    with pytest.raises(MappingError, match="--attribute-columns nope"):
        rows_to_messages(
            pl.read_csv(path),
            ReplayMapping(**{**vars(ACCOUNT_MAPPING), "attribute_columns": ("nope",)}),
        )
    with pytest.raises(MappingError, match="--event-id-column 'id'"):
        rows_to_messages(
            pl.read_csv(path), ReplayMapping(**{**vars(ACCOUNT_MAPPING), "event_id_column": "id"})
        )


def test_bad_paths_and_options_say_what_to_do(tmp_path):
    with pytest.raises(ReplayError, match="does not exist"):
        list(iter_messages(tmp_path / "nope.csv"))
    (tmp_path / "data.txt").write_text("a,b\n")
    with pytest.raises(ReplayError, match="--format"):
        list(iter_messages(tmp_path / "data.txt"))
    (tmp_path / "array.json").write_text('[{"a": 1}]')
    with pytest.raises(ReplayError, match="jq -c"):
        list(iter_messages(tmp_path / "array.json"))
    with pytest.raises(ReplayError, match="--ts-timezone"):
        ReplayMapping(ts_timezone="Mars/Olympus")


def test_broken_json_lines_become_invalid_json_messages(tmp_path):
    path = tmp_path / "events.jsonl"
    good = json.dumps({"customer_id": "c", "event_type": "login", "ts": "2025-01-01T00:00:00Z"})
    path.write_text(f"{good}\n{{not json\n{good}\n")

    messages = all_messages(path, ReplayMapping())

    assert len(messages) == 3
    results = [validate(v, now=NOW) for _, v in messages]
    assert sum(isinstance(r, Event) for r in results) == 2
    assert [r.reason for r in results if isinstance(r, Rejection)] == [Reason.INVALID_JSON]


# --- real broker -----------------------------------------------------------------


def test_replay_csv_into_the_topic_and_read_it_back(kafka_settings, topic, tmp_path):
    path = tmp_path / "accounts.csv"
    write_accounts_csv(path, rows=30)

    summary = replay_file(kafka_settings, topic, path, ACCOUNT_MAPPING)

    assert summary.rows_read == 30 and summary.events_produced == 30
    assert summary.invalid_by_reason == {}
    assert summary.renamed_event_types == {
        "Login": "login",
        "Page View": "page_view",
        "Support-Ticket": "support_ticket",
    }
    assert sum(summary.event_types.values()) == 30
    expected = {json.loads(v)["event_id"]: k for k, v in all_messages(path, ACCOUNT_MAPPING)}
    got = topic_messages(kafka_settings, topic)
    assert len(got) == 30
    assert {json.loads(v)["event_id"]: k for k, v in got} == expected
    assert {k for k, _ in got} == {b"acct-0", b"acct-1", b"acct-2"}


def test_invalid_rows_are_counted_produced_by_default_and_skipped_into_rejects(
    kafka_settings, topic, tmp_path
):
    path = tmp_path / "mixed.csv"
    path.write_text(
        "customer_id,event_type,ts\n"
        "c1,login,2025-01-01T00:00:00Z\n"
        "c2,login,1979-05-01T00:00:00Z\n"  # before 1980
        ",login,2025-01-01T00:00:00Z\n"  # no customer
        "c3,login,2025-01-02T00:00:00Z\n"
    )
    produced = replay_file(kafka_settings, topic, path, ReplayMapping())
    assert produced.invalid_by_reason == {Reason.MISSING_FIELD: 1, Reason.TS_OUT_OF_RANGE: 1}
    assert produced.events_produced == 4
    assert len(topic_messages(kafka_settings, topic)) == 4

    rejects = tmp_path / "out" / "rejects.jsonl"
    skipped = replay_file(
        kafka_settings,
        topic + "-skip",
        path,
        ReplayMapping(),
        partitions=2,
        skip_invalid=True,
        rejects_path=rejects,
    )
    assert skipped.invalid_by_reason == produced.invalid_by_reason
    assert skipped.events_produced == 2 and skipped.skipped_invalid == 2
    assert skipped.event_types == {"login": 2}
    assert skipped.rejects_path == str(rejects)
    records = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in records] == [
        (1, Reason.TS_OUT_OF_RANGE),
        (2, Reason.MISSING_FIELD),
    ]
    assert json.loads(records[0]["value"])["ts"] == "1979-05-01T00:00:00.000Z"
    assert sorted(
        json.loads(v)["customer_id"] for _, v in topic_messages(kafka_settings, topic + "-skip")
    ) == [
        "c1",
        "c3",
    ]


def test_json_lines_that_are_not_objects_are_skipped_into_rejects_with_their_row(
    kafka_settings, topic, tmp_path
):
    path = tmp_path / "events.jsonl"
    good = json.dumps({"customer_id": "c", "event_type": "login", "ts": "2025-01-01T00:00:00Z"})
    path.write_text(f"{good}\n{{not json\n{good}\n[1, 2]\n")
    rejects = tmp_path / "rejects.jsonl"
    summary = replay_file(
        kafka_settings, topic, path, ReplayMapping(), skip_invalid=True, rejects_path=rejects
    )
    assert summary.rows_read == 4 and summary.events_produced == 2
    assert summary.invalid_by_reason == {Reason.INVALID_JSON: 1, Reason.NOT_AN_OBJECT: 1}
    records = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["row"], r["reason"], r["value"]) for r in records] == [
        (1, Reason.INVALID_JSON, "{not json"),
        (3, Reason.NOT_AN_OBJECT, "[1, 2]"),
    ]
    assert len(topic_messages(kafka_settings, topic)) == 2


def test_cli_replays_with_column_options_and_prints_a_json_summary(
    kafka_settings, topic, tmp_path, capsys
):
    path = tmp_path / "accounts.csv"
    write_accounts_csv(path, rows=12)
    code = main(
        [
            "replay",
            str(path),
            "--customer-id-column",
            "account_id",
            "--event-type-column",
            "action",
            "--ts-column",
            "event_time",
            "--value-column",
            "amount",
            "--attribute-columns",
            "plan,seats",
            "--limit",
            "10",
            "--bootstrap-servers",
            kafka_settings.bootstrap_servers,
            "--topic",
            topic,
            "--json",
            "--no-progress",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert summary["rows_read"] == 10 and summary["events_produced"] == 10
    assert summary["topic"] == topic
    assert len(topic_messages(kafka_settings, topic)) == 10


def test_cli_turns_bad_input_into_a_message_not_a_traceback(tmp_path, capsys):
    path = tmp_path / "accounts.csv"
    write_accounts_csv(path)
    assert main(["replay", str(tmp_path / "missing.csv"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["replay", str(path), "--no-progress", "--customer-id-column", "acct"]) == 2
    err = capsys.readouterr().err
    assert "--customer-id-column 'acct'" in err and "account_id" in err
    assert main(["replay", str(path), "--subscriptions", "--ts-column", "x"]) == 2
    assert "--ts-column do not apply with --subscriptions" in capsys.readouterr().err


# --- reading options: separators and time formats --------------------------------

CDNOW_LIKE = (
    " customer_id  date number_of_cds  dollar_value\r\n"
    " 00001 19970101  1   11.77\r\n"
    " 00002 19970112  1   12.00\r\n"
    "\r\n"
    " 00002 19970112  5   77.00\r\n"
    " 23570 19980630  2   42.96\r\n"
)
CDNOW_MAPPING = cdnow_mapping()


def test_whitespace_separated_text_with_a_date_format(tmp_path):
    path = tmp_path / "cdnow.txt"
    path.write_bytes(CDNOW_LIKE.encode())

    messages = all_messages(path, CDNOW_MAPPING, fmt="csv", separator="whitespace")
    events = [json.loads(v) for _, v in messages]

    assert [k for k, _ in messages] == [b"00001", b"00002", b"00002", b"23570"]
    assert [e["customer_id"] for e in events] == ["00001", "00002", "00002", "23570"]
    assert [e["ts"] for e in events] == [
        "1997-01-01T00:00:00.000Z",
        "1997-01-12T00:00:00.000Z",
        "1997-01-12T00:00:00.000Z",
        "1998-06-30T00:00:00.000Z",
    ]
    assert [e["value"] for e in events] == [11.77, 12.0, 77.0, 42.96]
    assert [e["attributes"] for e in events][2] == {"number_of_cds": 5}
    assert len({e["event_id"] for e in events}) == 4  # two identical rows are two events

    # in a time zone, a date is that zone's midnight
    tokyo = ReplayMapping(**{**vars(CDNOW_MAPPING), "ts_timezone": "Asia/Tokyo"})
    first = json.loads(all_messages(path, tokyo, fmt="csv", separator="whitespace")[0][1])
    assert first["ts"] == "1996-12-31T15:00:00.000Z"
    # without the format the same numbers are epoch seconds: 1970, as before
    auto = ReplayMapping(**{**vars(CDNOW_MAPPING), "ts_format": None})
    first = json.loads(all_messages(path, auto, fmt="csv", separator="whitespace")[0][1])
    assert first["ts"].startswith("1970-08-20")


def test_blank_separated_file_read_with_commas_says_to_pass_the_separator(tmp_path):
    path = tmp_path / "cdnow.csv"
    path.write_bytes(CDNOW_LIKE.encode())
    with pytest.raises(ReplayError, match="pass --separator whitespace"):
        list(iter_messages(path, CDNOW_MAPPING))


def test_separators_by_character_and_name(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("customer_id;event_type;ts\n007;login;2025-01-01T00:00:00Z\n")
    for separator in (";", "semicolon"):
        events = decoded(all_messages(path, ReplayMapping(), separator=parse_separator(separator)))
        assert events[0]["customer_id"] == "007"
    assert parse_separator("tab") == parse_separator("\\t") == "\t"
    with pytest.raises(ReplayError, match="one character"):
        parse_separator("::")
    with pytest.raises(ReplayError, match="--separator applies to CSV"):
        list(iter_messages(path, ReplayMapping(), fmt="jsonl", separator=";"))


def test_ts_format_reads_numbers_text_and_offsets(tmp_path):
    frame = pl.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "event_type": ["login"] * 4,
            "day": [20250102, 20250103, 2025, None],  # numbers, as a Parquet export keeps them
            "when": ["02/01/2025 10:30 +0200", "03/01/2025 10:30 +0000", "junk", None],
        }
    )
    by_day = rows_to_messages(frame, ReplayMapping(ts_column="day", ts_format="%Y%m%d"))
    values = [json.loads(v) for _, v in by_day]
    assert [v["ts"] for v in values[:2]] == ["2025-01-02T00:00:00.000Z", "2025-01-03T00:00:00.000Z"]
    assert values[2]["ts"] == "2025"  # unreadable: kept as it was, for the contract to reject
    assert validate(by_day[2][1], now=NOW).reason == Reason.BAD_TS
    assert "ts" not in values[3]

    with_offset = ReplayMapping(ts_column="when", ts_format="%d/%m/%Y %H:%M %z")
    values = [json.loads(v) for _, v in rows_to_messages(frame, with_offset)]
    assert [v["ts"] for v in values[:2]] == ["2025-01-02T08:30:00.000Z", "2025-01-03T10:30:00.000Z"]


@pytest.mark.parametrize(
    ("fmt", "message"), [("YYYYMMDD", "has no % code"), ("%Y-%m-%d %H", "not usable")]
)
def test_a_ts_format_that_cannot_work_is_refused(fmt, message):
    with pytest.raises(ReplayError, match=message):
        ReplayMapping(ts_format=fmt)
    with pytest.raises(ReplayError, match=message):
        SubscriptionMapping(ts_format=fmt)


def test_a_later_file_of_a_glob_missing_a_column_fails_before_the_cluster(tmp_path):
    good = "customer_id,event_type,ts\nc1,login,2025-01-01T00:00:00Z\n"
    (tmp_path / "a.csv").write_text(good)
    (tmp_path / "b.csv").write_text(good.replace("customer_id", "account"))
    with pytest.raises(
        MappingError, match=r"--customer-id-column 'customer_id': no such column in b\.csv"
    ):
        replay_file(KafkaSettings("127.0.0.1:1"), "t", tmp_path, ReplayMapping())


# --- the column check ------------------------------------------------------------

# pieces of text every rule of the contract looks at: quotes, backslashes, control
# characters, non-ASCII, newlines, and lengths beyond the 128-character id limit
ODD_TEXT = st.lists(
    st.sampled_from(
        [
            "a",
            "b",
            "_",
            "Z",
            " ",
            "9",
            '"',
            "\\",
            "\x00",
            "\x1f",
            "\x7f",
            "é",
            "€",
            "\n",
            "-",
            "x" * 130,
        ]
    ),
    max_size=6,
).map("".join)


def mostly(good, odd):
    """`good` three times in four: a row with one bad field shows the rule that field breaks."""
    return st.integers(0, 3).flatmap(lambda i: odd if i == 0 else good)


@st.composite
def hostile_frames(draw) -> pl.DataFrame:
    n = draw(st.integers(1, 12))

    def column(values):
        return draw(st.lists(values, min_size=n, max_size=n))

    ids = mostly(st.sampled_from(["c1", "Zoë", "007"]), st.one_of(st.none(), ODD_TEXT))
    times = mostly(
        st.sampled_from(["2025-01-01T00:00:00Z", "2025-06-01 12:00:00", "1735689600"]),
        st.one_of(
            st.none(),
            ODD_TEXT,
            st.sampled_from(
                [
                    "1979-12-31T23:59:59.999Z",
                    "1980-01-01T00:00:00Z",
                    "1980-01-01T00:00:00.001Z",
                    "1980-01-01 00:00:00",
                    "315532800",
                    "2026-09-22T00:00:00.000Z",
                    "2026-09-22T00:00:00.001Z",
                    "2026-09-21T23:59:59Z",
                    "2026-09-23T00:00:00Z",
                    "3000-01-01",
                    "1735689600123",
                    "9" * 20,
                    "-5",
                    "1e30",
                    "20250101",
                    "0000-01-01",
                ]
            ),
        ),
    )
    values = mostly(
        st.sampled_from([None, "1.5", " 7 ", "-0.0", "1e-7"]),
        st.sampled_from(["nan", "inf", "-inf", "1e400", "lots", "", "0x10"]),
    )
    return pl.DataFrame(
        {
            "event_id": column(mostly(st.none(), ODD_TEXT)),
            "customer_id": column(ids),
            "event_type": column(mostly(st.sampled_from(["login", "Page View"]), ODD_TEXT)),
            "ts": column(times),
            "value": column(values),
            "note": column(mostly(st.sampled_from([None, "ok", 'a"b']), st.just("y" * 1025))),
            "n": column(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
        },
        schema={
            c: pl.String for c in ("event_id", "customer_id", "event_type", "ts", "value", "note")
        }
        | {"n": pl.Int64},
    )


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(frame=hostile_frames(), from_text=st.booleans(), fmt=st.sampled_from([None, "%Y%m%d"]))
def test_the_column_check_flags_every_message_the_contract_rejects(frame, from_text, fmt):
    """Only flagged messages are validated one by one: a message the contract rejects
    must never go unflagged, or replay would count it as valid."""
    mapping = ReplayMapping(value_column="value", attribute_columns=("note", "n"), ts_format=fmt)
    builder = MessageBuilder(mapping, now=NOW)
    built = builder.build(frame, bind(mapping, frame.columns, "f.csv"), "f.csv", 0, from_text)
    for i, value in enumerate(built.values):
        msgspec.json.decode(value)  # always a JSON object
        if isinstance(validate(value, now=NOW), Rejection):
            assert i in built.suspects, value


# --- prefetching -------------------------------------------------------------------


def test_prefetching_stays_a_bounded_number_of_batches_ahead_and_passes_errors_on():
    made = []

    def batches():
        for i in range(20):
            made.append(i)
            yield i

    seen = []
    for item in prefetched(batches(), depth=2):
        time.sleep(0.01)  # the consumer is the slow side, as the producer is in a replay
        assert len(made) - len(seen) <= 4, "built too far ahead"  # 2 waiting, 1 being made
        seen.append(item)
    assert seen == list(range(20))

    def failing():
        yield 1
        raise ReplayError("row 2 is bad")

    with pytest.raises(ReplayError, match="row 2 is bad"):
        list(prefetched(failing()))


# --- a subscriptions table, alone and with its events -------------------------------


def write_two_files(tmp_path, subscriptions: str | None = None, events: str | None = None):
    events_path = tmp_path / "events.csv"
    events_path.write_text(
        events
        or "account,action,at,amount\n"
        "a1,Login,2025-01-02T10:00:00Z,\n"
        "a1,purchase,2025-01-03T10:00:00Z,12.5\n"
        "a2,Login,2025-01-04T10:00:00Z,\n"
        "a3,Login,2025-01-05T10:00:00Z,\n"
    )
    subscriptions_path = tmp_path / "subscriptions.csv"
    subscriptions_path.write_text(
        subscriptions
        or "account,begin,finish,tier\n"
        "a1,01/01/2025,,pro\n"
        "a2,01/01/2025,10/01/2025,basic\n"
        "a3,02/01/2025,20/01/2025,pro\n"
    )
    return events_path, subscriptions_path


TWO_FILE_EVENTS = ReplayMapping(
    customer_id_column="account",
    event_type_column="action",
    ts_column="at",
    value_column="amount",
    ts_format="%Y-%m-%dT%H:%M:%SZ",
)


def subscriptions_input(path, **changes) -> ReplayInput:
    mapping = SubscriptionMapping(
        **{
            "customer_id_column": "account",
            "start_column": "begin",
            "end_column": "finish",
            "plan_column": "tier",
            "ts_format": "%d/%m/%Y",
            **changes,
        }
    )
    return ReplayInput(
        path, mapping, options=(("customer_id_column", "--subscriptions-customer-id-column"),)
    )


UNREACHABLE = KafkaSettings("127.0.0.1:1")  # any contact with it fails: the checks come first


def check_fails(events_path, subscriptions, **kwargs) -> str:
    with pytest.raises(ReplayError) as error:
        replay_file(
            UNREACHABLE, "t", events_path, TWO_FILE_EVENTS, subscriptions=subscriptions, **kwargs
        )
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_subscription_that_ends_before_it_starts_is_named_by_row(tmp_path):
    events, subscriptions = write_two_files(
        tmp_path,
        subscriptions="account,begin,finish,tier\n"
        "a1,01/01/2025,,pro\n"
        "a2,01/03/2025,10/01/2025,basic\n"
        "a3,02/01/2025,20/01/2025,pro\n",
    )
    message = check_fails(events, subscriptions_input(subscriptions))
    assert message.startswith(f"{subscriptions}: 1 subscription ends before it starts")
    assert "row 2 (ends 2025-01-10 00:00:00, starts 2025-03-01 00:00:00)" in message
    assert "'finish' before 'begin'" in message and "Nothing was produced." in message


def test_unreadable_subscription_dates_name_rows_column_and_the_format_options(tmp_path):
    rows = "".join(f"a{i},{i:02d}/01/2025,soon,pro\n" for i in range(1, 6))
    events, subscriptions = write_two_files(
        tmp_path, subscriptions="account,begin,finish,tier\na0,2025-01-01,,pro\n" + rows
    )
    message = check_fails(events, subscriptions_input(subscriptions))
    assert (
        "cannot read as times the start (column 'begin') of 1 row: row 1 ('2025-01-01')" in message
    )
    assert "the end (column 'finish') of 5 rows: row 2 ('soon'), row 3 ('soon'), row 4" in message
    assert "and 2 more" in message and "They do not match --ts-format '%d/%m/%Y'" in message
    assert "--ts-unit" in message

    # alone (--subscriptions) the same table is checked the same way
    with pytest.raises(ReplayError, match="cannot read as times the start"):
        replay_file(UNREACHABLE, "t", subscriptions, subscriptions_input(subscriptions).mapping)
    # without a format, the hint says to give one
    auto = subscriptions_input(subscriptions, ts_format=None)
    assert "Pass --ts-format (strftime codes" in check_fails(events, auto)


def test_customers_in_one_file_only_stop_the_replay_with_counts_and_examples(tmp_path):
    events, subscriptions = write_two_files(
        tmp_path,
        subscriptions="account,begin,finish,tier\n"
        "a1,01/01/2025,,pro\n"
        "a2,01/01/2025,10/01/2025,basic\n"
        "a9,01/01/2025,,pro\n",
    )
    message = check_fails(events, subscriptions_input(subscriptions))
    assert "1 of the 3 customers of " + str(events) in message
    assert "has no subscription in " + str(subscriptions) + " (e.g. 'a3')" in message
    assert "has no events in " + str(events) + " (e.g. 'a9')" in message
    assert "--unmatched-customers keep" in message and "Nothing was produced." in message


def test_ids_that_differ_in_leading_zeros_are_pointed_out(tmp_path):
    events, subscriptions = write_two_files(
        tmp_path,
        events="account,action,at,amount\n007,Login,2025-01-02T10:00:00Z,\n",
        subscriptions="account,begin,finish,tier\n7,01/01/2025,,pro\n",
    )
    message = check_fails(events, subscriptions_input(subscriptions))
    assert "No customer is in both files (the ids differ in leading zeros" in message


def test_a_missing_column_of_the_subscriptions_file_names_file_column_and_option(tmp_path):
    events, subscriptions = write_two_files(tmp_path)
    message = check_fails(events, subscriptions_input(subscriptions, customer_id_column="acct"))
    assert message == (
        "--subscriptions-customer-id-column 'acct': no such column in subscriptions.csv; "
        "its columns are: account, begin, finish, tier. "
        "Pass --subscriptions-customer-id-column with one of them."
    )
    message = check_fails(events, subscriptions_input(subscriptions, end_column="ended"))
    assert message.startswith("--end-column 'ended': no such column in subscriptions.csv")


# --- real broker: public data, two files, failures ---------------------------------


def replay_cli(kafka_settings, topic, *args) -> int:
    return main(
        [
            "replay",
            *map(str, args),
            "--bootstrap-servers",
            kafka_settings.bootstrap_servers,
            "--topic",
            topic,
            "--no-progress",
        ]
    )


def test_cdnow_master_replays_with_column_mapping_only(kafka_settings, topic, capsys):
    """Real purchases of a CD retailer (lifetimes' CDNOW_master.txt), as the README shows."""
    path = cdnow_master_path()
    code = replay_cli(
        kafka_settings,
        topic,
        path,
        *("--format", "csv", "--separator", "whitespace"),
        *("--customer-id-column", "customer_id", "--ts-column", "date", "--ts-format", "%Y%m%d"),
        *("--event-type", "purchase", "--value-column", "dollar_value"),
        *("--attribute-columns", "number_of_cds", "--json"),
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert summary["rows_read"] == summary["events_produced"] == 69_659
    assert summary["customers"] == 23_570
    assert (summary["first_ts"], summary["last_ts"]) == (
        "1997-01-01T00:00:00Z",
        "1998-06-30T00:00:00Z",
    )
    assert summary["invalid_by_reason"] == {}  # 1997-98 is within the contract (from 1980)
    [note] = summary["notes"]  # purchases only: churn must be inactivity
    assert "CHURN_DEFINITION=inactivity" in note

    events = [(key, json.loads(value)) for key, value in topic_messages(kafka_settings, topic)]
    assert len(events) == 69_659
    assert len({e["event_id"] for _, e in events}) == 69_659  # every row once
    assert {key for key, _ in events} == {e["customer_id"].encode() for _, e in events}
    assert len({key for key, _ in events}) == 23_570
    days = sorted(e["ts"] for _, e in events)
    assert (days[0], days[-1]) == ("1997-01-01T00:00:00.000Z", "1998-06-30T00:00:00.000Z")
    assert all(ts.endswith("T00:00:00.000Z") for ts in days)
    assert round(sum(e["value"] for _, e in events), 2) == 2_500_315.63
    assert sum(e["attributes"]["number_of_cds"] for _, e in events) == 167_881
    first = min((e for _, e in events), key=lambda e: int(e["event_id"].rsplit("-", 1)[1]))
    assert (first["customer_id"], first["ts"], first["value"]) == (
        "00001",
        "1997-01-01T00:00:00.000Z",
        11.77,
    )


def test_events_and_subscriptions_replay_in_one_command(kafka_settings, topic, tmp_path, capsys):
    events, subscriptions = write_two_files(tmp_path)
    args = [
        events,
        *("--customer-id-column", "account", "--event-type-column", "action"),
        *("--ts-column", "at", "--value-column", "amount"),
        *("--subscriptions-file", subscriptions, "--start-column", "begin"),
        *("--end-column", "finish", "--plan-column", "tier"),
        *("--subscriptions-ts-format", "%d/%m/%Y", "--json"),  # the events' times are ISO
    ]
    assert replay_cli(kafka_settings, topic, *args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["subscriptions_source"] == str(subscriptions)
    assert summary["rows_read"] == 4 + 3 and summary["events_produced"] == 4 + 3 + 2
    assert summary["customers"] == 3
    assert summary["churn_events"] == 2 and summary["notes"] == []
    assert summary["event_types"] == {
        "login": 3,
        "subscription_started": 3,
        "subscription_cancelled": 2,
        "purchase": 1,
    }
    got = [json.loads(v) for _, v in topic_messages(kafka_settings, topic)]
    lifecycle = sorted(
        (e["customer_id"], e["event_type"], e["ts"], e["attributes"]["plan"])
        for e in got
        if e["event_type"].startswith("subscription_")
    )
    assert lifecycle == [
        ("a1", "subscription_started", "2025-01-01T00:00:00.000Z", "pro"),
        ("a2", "subscription_cancelled", "2025-01-10T00:00:00.000Z", "basic"),
        ("a2", "subscription_started", "2025-01-01T00:00:00.000Z", "basic"),
        ("a3", "subscription_cancelled", "2025-01-20T00:00:00.000Z", "pro"),
        ("a3", "subscription_started", "2025-01-02T00:00:00.000Z", "pro"),
    ]
    assert sorted(e["ts"] for e in got if e["event_type"] == "login")[0] == (
        "2025-01-02T10:00:00.000Z"
    )

    # again: the same event ids, so the features drop the repeats
    assert replay_cli(kafka_settings, topic, *args) == 0
    capsys.readouterr()
    again = [json.loads(v) for _, v in topic_messages(kafka_settings, topic)]
    assert len(again) == 2 * len(got)
    assert {e["event_id"] for e in again} == {e["event_id"] for e in got}


def test_unmatched_customers_kept_or_dropped_when_asked(kafka_settings, topic, tmp_path):
    events, subscriptions = write_two_files(
        tmp_path,
        subscriptions="account,begin,finish,tier\n"
        "a1,01/01/2025,,pro\n"
        "a2,01/01/2025,10/01/2025,basic\n"
        "a9,01/01/2025,,pro\n",
    )
    spec = subscriptions_input(subscriptions)
    kept = replay_file(
        kafka_settings,
        topic,
        events,
        TWO_FILE_EVENTS,
        subscriptions=spec,
        unmatched_customers="keep",
    )
    assert kept.unmatched_customers == {"events_only": 1, "subscriptions_only": 1}
    assert kept.events_produced == 4 + 3 + 1 and kept.dropped_rows == 0
    assert any("were replayed: 1 with events but no subscription" in n for n in kept.notes)

    dropped = replay_file(
        kafka_settings,
        topic + "-drop",
        events,
        TWO_FILE_EVENTS,
        subscriptions=spec,
        unmatched_customers="drop",
    )
    assert dropped.dropped_rows == 2  # a3's login and a9's subscription
    assert dropped.events_produced == 3 + 2 + 1
    customers = {k for k, _ in topic_messages(kafka_settings, topic + "-drop")}
    assert customers == {b"a1", b"a2"}
    assert any("were left out" in n and "(2 rows left out)" in n for n in dropped.notes)


def test_events_without_churn_replay_but_the_summary_says_what_to_do(
    kafka_settings, topic, tmp_path, capsys
):
    path = tmp_path / "accounts.csv"
    write_accounts_csv(path, rows=8)
    summary = replay_file(kafka_settings, topic, path, ACCOUNT_MAPPING)
    assert summary.events_produced == 8 and summary.churn_events == 0
    [note] = summary.notes
    assert "CHURN_DEFINITION=cancellation" in note and "no customer would ever churn" in note
    assert "--subscriptions-file" in note and "CHURN_DEFINITION=inactivity" in note

    # a subscriptions table whose subscriptions are all still running: no churn either
    table = tmp_path / "subscriptions.csv"
    table.write_text("customer_id,started_at,ended_at\nc1,2025-01-01,\n")
    assert replay_cli(kafka_settings, topic, table, "--subscriptions") == 0
    out = capsys.readouterr().out
    assert "note: no subscription_cancelled events" in out and "--end-column" in out


def test_cli_refuses_bad_pairs_in_one_line_and_produces_nothing(
    kafka_settings, topic, tmp_path, capsys
):
    events, subscriptions = write_two_files(
        tmp_path,
        subscriptions="account,begin,finish,tier\na1,01/02/2025,01/01/2025,pro\n",
    )
    common = [
        events,
        *("--customer-id-column", "account", "--event-type-column", "action"),
        *("--ts-column", "at", "--subscriptions-file", subscriptions),
        *("--start-column", "begin", "--end-column", "finish"),
        *("--subscriptions-ts-format", "%d/%m/%Y"),
    ]
    for extra, expected in (
        ([], "subscription ends before it starts"),
        (["--plan-column", "level"], "--plan-column 'level': no such column in subscriptions.csv"),
        (["--value-column", "price"], "--value-column 'price': no such column in events.csv"),
    ):
        assert replay_cli(kafka_settings, topic, *common, *extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("churn-platform replay: ") and expected in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert topic_messages(kafka_settings, topic) == []  # nothing was produced
    assert main(["replay", str(events), "--unmatched-customers", "keep"]) == 2
    assert "need --subscriptions-file" in capsys.readouterr().err
    assert main(["replay", str(events), "--end-column", "finish"]) == 2
    assert "--end-column need a subscriptions table" in capsys.readouterr().err


def test_a_broker_gone_half_way_says_how_far_it_got_and_that_rerunning_is_safe(
    tmp_path, monkeypatch, capsys
):
    path = tmp_path / "accounts.csv"
    write_accounts_csv(path, rows=5_000)
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    produce = replay_run._produce
    batches = []

    def produce_then_stop_the_broker(ready, producer, *args):
        produce(ready, producer, *args)
        batches.append(ready.rows)
        if len(batches) == 2:  # two batches acknowledged, then the broker is gone
            assert producer.flush(30) == 0
            broker.stop()

    monkeypatch.setattr(replay_run, "_produce", produce_then_stop_the_broker)
    try:
        with pytest.raises(ReplayProduceError) as error:
            replay_file(
                broker.settings,
                "gone",
                path,
                ACCOUNT_MAPPING,
                batch_rows=1_000,
                producer_config={"message.timeout.ms": 2_000},
            )
    finally:
        broker.stop()
    message = str(error.value)
    assert error.value.delivered == 2_000
    assert "rows were read: 2,000 events were acknowledged" in message
    assert "rerunning the replay is safe: the events get the same ids" in message
    assert broker.settings.bootstrap_servers in message
