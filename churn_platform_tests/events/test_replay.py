"""Replay: a user's CSV / JSON Lines / Parquet rows become contract events in the topic."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from churn_platform.cli import main
from churn_platform.events.contract import Event, Reason, Rejection
from churn_platform.events.replay import (
    MappingError,
    ReplayError,
    ReplayMapping,
    SubscriptionMapping,
    iter_messages,
    normalize_event_type,
    replay_file,
    rows_to_messages,
)
from churn_platform.events.validation import validate
from churn_platform.kafka.admin import partitions_of
from churn_platform.kafka.config import KafkaSettings

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


def read_topic(settings: KafkaSettings, topic: str) -> list[tuple[bytes, bytes]]:
    """Every message of `topic`: assign() all partitions from 0 and read to EOF on each."""
    partitions = partitions_of(settings, topic)
    consumer = Consumer(
        settings.client_config(
            **{"group.id": "replay-test", "enable.partition.eof": True, "enable.auto.commit": False}
        )
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    at_eof: set[int] = set()
    messages = []
    try:
        while len(at_eof) < len(partitions):
            msg = consumer.poll(5.0)
            assert msg is not None, f"no EOF from partitions {set(partitions) - at_eof}"
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                at_eof.add(msg.partition())
                continue
            messages.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return messages


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
    got = read_topic(kafka_settings, topic)
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
        "c2,login,1990-05-01T00:00:00Z\n"  # before 2000
        ",login,2025-01-01T00:00:00Z\n"  # no customer
        "c3,login,2025-01-02T00:00:00Z\n"
    )
    produced = replay_file(kafka_settings, topic, path, ReplayMapping())
    assert produced.invalid_by_reason == {Reason.MISSING_FIELD: 1, Reason.TS_OUT_OF_RANGE: 1}
    assert produced.events_produced == 4
    assert len(read_topic(kafka_settings, topic)) == 4

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
    assert json.loads(records[0]["value"])["ts"] == "1990-05-01T00:00:00.000Z"
    assert sorted(
        json.loads(v)["customer_id"] for _, v in read_topic(kafka_settings, topic + "-skip")
    ) == [
        "c1",
        "c3",
    ]


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
    assert len(read_topic(kafka_settings, topic)) == 10


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
