"""Unit tests of result parsing (autoloop_daemon.results): pure functions of text."""

from __future__ import annotations

import json
from typing import Any

import pytest

from autoloop_daemon.exceptions import ResultError
from autoloop_daemon.runs.results import (
    ParsedResult,
    parse_result,
    parse_scorer_output,
    scores_from_json,
    tail_text,
)

SUMMARY = """\
Running pipeline...
Pipeline Summary:
  Target: /path/to/skill
  Attempts: 1/3
  Final Decision: keep
  Candidate: cand-01-skill
  Artifact: /state/receipts/gate-0001.json
"""


def line(**fields: Any) -> str:
    """One JSON result line."""
    return json.dumps(fields)


# --- JSON result lines -------------------------------------------------------------------


def test_full_json_result_is_parsed() -> None:
    """Every documented field of a JSON result line is read and typed."""
    text = line(
        decision="keep",
        candidate_id="cand-01",
        artifact_path="/s/a.json",
        attempts=2,
        scores={"accuracy": 0.8, "coverage": 1},
        weighted_score=0.9,
        cost_usd=0.15,
    )
    assert parse_result(text) == ParsedResult(
        decision="keep",
        candidate_id="cand-01",
        artifact_path="/s/a.json",
        attempts=2,
        scores={"accuracy": 0.8, "coverage": 1.0},
        weighted_score=0.9,
        cost_usd=0.15,
    )


def test_minimal_json_result_has_none_fields() -> None:
    """Only the decision is required; everything else is None."""
    assert parse_result(line(decision="reject")) == ParsedResult(
        "reject", None, None, None, None, None, None
    )


@pytest.mark.parametrize(
    "decision",
    [
        "keep", "reject", "revert", "pending", "pending_promote", "no_candidates",
        "no_accepted_candidates", "ship_it",
    ],
)  # fmt: skip
def test_every_decision_is_accepted(decision: str) -> None:
    """Every word the real orchestrator prints, and an unknown one, is a decision."""
    result = parse_result(line(decision=decision))
    assert result is not None
    assert result.decision == decision


def test_decision_is_lower_cased_and_stripped() -> None:
    """`" KEEP "` reads as keep."""
    result = parse_result(line(decision=" KEEP "))
    assert result is not None
    assert result.decision == "keep"


def test_aliases_final_decision_candidate_and_artifact() -> None:
    """final_decision / final_candidate_id / final_artifact_path are aliases."""
    result = parse_result(
        line(final_decision="revert", final_candidate_id="c9", final_artifact_path="/a")
    )
    assert result is not None
    assert (result.decision, result.candidate_id, result.artifact_path) == ("revert", "c9", "/a")


def test_plain_names_win_over_aliases() -> None:
    """When both spellings are present, the plain name is used."""
    result = parse_result(
        line(decision="keep", final_decision="reject", candidate_id="a", final_candidate_id="b")
    )
    assert result is not None
    assert (result.decision, result.candidate_id) == ("keep", "a")


def test_last_result_line_wins() -> None:
    """With several result lines, the last one is the result."""
    text = "\n".join([line(decision="keep"), "progress...", line(decision="reject"), "done"])
    result = parse_result(text)
    assert result is not None
    assert result.decision == "reject"


def test_json_without_decision_is_not_a_result() -> None:
    """A later JSON line without decision does not hide an earlier result line."""
    text = "\n".join([line(decision="keep"), line(progress=0.5), json.dumps([1, 2])])
    result = parse_result(text)
    assert result is not None
    assert result.decision == "keep"


def test_invalid_json_lines_are_skipped() -> None:
    """A line that looks like JSON but does not parse is not a result line."""
    text = line(decision="keep") + '\n{"decision": "reject",\n{not json}\n'
    result = parse_result(text)
    assert result is not None
    assert result.decision == "keep"


def test_json_result_wins_over_summary() -> None:
    """A JSON result line is used even when a text summary follows it."""
    text = line(decision="reject") + "\n" + SUMMARY
    result = parse_result(text)
    assert result is not None
    assert result.decision == "reject"


def test_crlf_and_indentation_are_tolerated() -> None:
    """Windows line ends and leading spaces around a JSON line do not matter."""
    result = parse_result("noise\r\n   " + line(decision="keep") + "  \r\n")
    assert result is not None
    assert result.decision == "keep"


def test_no_result_gives_none() -> None:
    """Output with neither a JSON result nor a summary gives None."""
    assert parse_result("") is None
    assert parse_result("hello\nworld\n{}\n[]\n") is None
    assert parse_result("\x00\xff garbage \ufffd") is None


def test_empty_scores_count_as_absent() -> None:
    """`"scores": {}` is None so that the scorer or learner files are used instead."""
    result = parse_result(line(decision="keep", scores={}))
    assert result is not None
    assert result.scores is None


def test_nested_score_objects_are_accepted() -> None:
    """A score may be `{"score": x}` in a result line as in scorer output."""
    result = parse_result(line(decision="keep", scores={"a": {"score": 0.4}}))
    assert result is not None
    assert result.scores == {"a": 0.4}


def test_integer_candidate_id_becomes_text() -> None:
    """A numeric candidate id is kept, as text."""
    result = parse_result(line(decision="keep", candidate_id=7))
    assert result is not None
    assert result.candidate_id == "7"


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"weighted_score": "high"}, "weighted_score"),
        ({"weighted_score": True}, "weighted_score"),
        ({"weighted_score": 1.5}, "weighted_score"),
        ({"cost_usd": -0.01}, "cost_usd"),
        ({"cost_usd": "0.10"}, "cost_usd"),
        ({"cost_usd": False}, "cost_usd"),
        ({"scores": [0.5]}, "scores"),
        ({"scores": "0.5"}, "scores"),
        ({"scores": {"accuracy": "high"}}, "scores.accuracy"),
        ({"scores": {"accuracy": 1.2}}, "scores.accuracy"),
        ({"scores": {"accuracy": -0.1}}, "scores.accuracy"),
        ({"scores": {"accuracy": True}}, "scores.accuracy"),
        ({"scores": {"accuracy": None}}, "scores.accuracy"),
        ({"scores": {"accuracy": {"value": 0.5}}}, "scores.accuracy"),
        ({"candidate_id": ["x"]}, "candidate_id"),
        ({"artifact_path": {"p": 1}}, "artifact_path"),
    ],
)
def test_invalid_fields_raise_naming_the_field(fields: dict[str, Any], field_name: str) -> None:
    """A result line with a field of the wrong type or range raises ResultError naming it."""
    with pytest.raises(ResultError, match=rf"^{field_name}:"):
        parse_result(line(decision="keep", **fields))


@pytest.mark.parametrize(
    ("raw", "field_name"),
    [
        ('{"decision": "keep", "weighted_score": NaN}', "weighted_score"),
        ('{"decision": "keep", "weighted_score": Infinity}', "weighted_score"),
        ('{"decision": "keep", "cost_usd": -Infinity}', "cost_usd"),
        ('{"decision": "keep", "cost_usd": 1e999}', "cost_usd"),
        ('{"decision": "keep", "scores": {"a": NaN}}', "scores.a"),
    ],
)
def test_non_finite_numbers_are_rejected(raw: str, field_name: str) -> None:
    """json.loads accepts NaN and Infinity; the parser does not."""
    with pytest.raises(ResultError, match=rf"^{field_name}:"):
        parse_result(raw)


@pytest.mark.parametrize("attempts", ["two", 1.5, True, -1, [1]])
def test_a_bad_attempts_value_is_dropped_not_an_error(attempts: Any) -> None:
    """`attempts` is unused: a value that is not a count never fails a good result."""
    result = parse_result(line(decision="keep", attempts=attempts))
    assert result is not None
    assert (result.decision, result.attempts) == ("keep", None)


@pytest.mark.parametrize("decision", ["", "  ", "two words", 1, None, True])
def test_a_decision_that_is_not_a_word_raises(decision: Any) -> None:
    """A decision that is empty, not a string, or not one word raises naming decision."""
    with pytest.raises(ResultError, match=r"^(final_)?decision:"):
        parse_result(line(decision=decision))


def test_a_bad_final_decision_names_its_key() -> None:
    """The error names the key actually used."""
    with pytest.raises(ResultError, match=r"^final_decision:"):
        parse_result(line(final_decision=["keep"]))


def test_invalid_last_result_is_not_replaced_by_an_earlier_one() -> None:
    """The last result line is the result: if it is invalid, the run's result is invalid."""
    text = line(decision="keep") + "\n" + line(decision="keep", cost_usd=-1)
    with pytest.raises(ResultError, match=r"^cost_usd:"):
        parse_result(text)


def test_huge_values_in_errors_are_shortened() -> None:
    """Error messages stay one short line even for huge values."""
    with pytest.raises(ResultError) as info:
        parse_result(line(decision="keep", weighted_score="x" * 10_000))
    assert len(str(info.value)) < 200


# --- text summary ------------------------------------------------------------------------


def test_summary_block_is_parsed() -> None:
    """improvement-orchestrator's text block gives decision, candidate, artifact, attempts."""
    assert parse_result(SUMMARY) == ParsedResult(
        decision="keep",
        candidate_id="cand-01-skill",
        artifact_path="/state/receipts/gate-0001.json",
        attempts=1,
        scores=None,
        weighted_score=None,
        cost_usd=None,
    )


def test_last_summary_block_wins() -> None:
    """With several summary blocks, the last one is the result."""
    second = SUMMARY.replace("keep", "reject").replace("1/3", "2/3")
    result = parse_result(SUMMARY + "\nretrying\n" + second)
    assert result is not None
    assert (result.decision, result.attempts) == ("reject", 2)


def test_summary_block_ends_at_first_unindented_line() -> None:
    """Lines after the block do not belong to it."""
    text = "Pipeline Summary:\n  Final Decision: pending\nCandidate: not-this\n"
    result = parse_result(text)
    assert result is not None
    assert (result.decision, result.candidate_id) == ("pending", None)


def test_summary_without_decision_is_not_a_result() -> None:
    """A summary block without Final Decision yields no result (or an earlier block's)."""
    assert parse_result("Pipeline Summary:\n  Target: /x\n") is None
    result = parse_result(SUMMARY + "Pipeline Summary:\n  Target: /x\n")
    assert result is not None
    assert result.decision == "keep"


def test_summary_none_values_and_plain_attempts() -> None:
    """`Candidate: None` means no candidate; `Attempts: 3` without a total is fine."""
    text = (
        "Pipeline Summary:\n  Attempts: 3\n  Final Decision: Reject\n"
        "  Candidate: None\n  Artifact: -\n"
    )
    assert parse_result(text) == ParsedResult("reject", None, None, 3, None, None, None)


@pytest.mark.parametrize("word", ["pending_promote", "no_candidates", "no_accepted_candidates"])
def test_summary_with_the_real_orchestrators_other_decisions(word: str) -> None:
    """`Final Decision:` words beyond keep/reject are completed iterations, verbatim."""
    result = parse_result(SUMMARY.replace("keep", word))
    assert result is not None
    assert result.decision == word


def test_summary_with_an_empty_decision_raises() -> None:
    """An empty Final Decision in the summary raises ResultError naming decision."""
    with pytest.raises(ResultError, match=r"^decision:"):
        parse_result(SUMMARY.replace("Final Decision: keep", "Final Decision: "))


def test_summary_with_bad_attempts_is_dropped() -> None:
    """An Attempts value that is not N or N/M is dropped, not an error."""
    result = parse_result(SUMMARY.replace("1/3", "many"))
    assert result is not None
    assert result.attempts is None


# --- scorer output -----------------------------------------------------------------------


def test_scorer_final_scores() -> None:
    """improvement-learner's `final_scores` object is read."""
    text = json.dumps({"final_scores": {"accuracy": 0.8, "coverage": 0.7}, "iterations": 1})
    assert parse_scorer_output(text) == {"accuracy": 0.8, "coverage": 0.7}


def test_scorer_dimensions_is_the_older_name() -> None:
    """`dimensions` is accepted when `final_scores` is absent."""
    assert parse_scorer_output(json.dumps({"dimensions": {"a": 0.5}})) == {"a": 0.5}


def test_scorer_final_scores_wins_over_dimensions() -> None:
    """With both, `final_scores` is used."""
    text = json.dumps({"final_scores": {"a": 0.9}, "dimensions": {"a": 0.1}})
    assert parse_scorer_output(text) == {"a": 0.9}


def test_scorer_nested_score_objects() -> None:
    """A value may be `{"score": number}` with other keys beside it."""
    text = json.dumps({"final_scores": {"a": {"score": 0.6, "notes": "x"}, "b": 1}})
    assert parse_scorer_output(text) == {"a": 0.6, "b": 1.0}


def test_scorer_pretty_printed_after_log_lines() -> None:
    """Indented JSON that ends the output after some log lines is found."""
    doc = json.dumps({"final_scores": {"a": {"score": 0.3}}}, indent=2)
    assert parse_scorer_output("Loading...\nScoring {2} dims\n" + doc + "\n") == {"a": 0.3}


def test_scorer_last_json_line_among_log_lines() -> None:
    """The last JSON-object line with scores is used, even with lines after it."""
    text = "\n".join(
        [
            json.dumps({"final_scores": {"a": 0.1}}),
            json.dumps({"final_scores": {"a": 0.2}}),
            json.dumps({"event": "done"}),
            "bye",
        ]
    )
    assert parse_scorer_output(text) == {"a": 0.2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no json here", "no JSON"),
        ("", "no JSON"),
        (json.dumps({"other": 1}), "^final_scores: missing"),
        (json.dumps({"final_scores": [0.5]}), "^final_scores:"),
        (json.dumps({"final_scores": {"a": 2}}), "^final_scores.a:"),
        (json.dumps({"final_scores": {"a": "high"}}), "^final_scores.a:"),
        (json.dumps({"dimensions": {"a": {"score": -1}}}), "^dimensions.a:"),
        ('{"final_scores": {"a": NaN}}', "^final_scores.a:"),
    ],
)
def test_scorer_errors(text: str, message: str) -> None:
    """Missing, malformed or out-of-range scorer output raises ResultError."""
    with pytest.raises(ResultError, match=message):
        parse_scorer_output(text)


def test_scores_from_json_on_decoded_object() -> None:
    """scores_from_json applies the same rules to an already-decoded document."""
    assert scores_from_json({"final_scores": {"a": {"score": 0.5}}}) == {"a": 0.5}
    assert scores_from_json({"dimensions": {"b": 0}}) == {"b": 0.0}
    with pytest.raises(ResultError):
        scores_from_json([1, 2])
    with pytest.raises(ResultError, match=r"^final_scores: missing"):
        scores_from_json({})


# --- tail_text ---------------------------------------------------------------------------


def test_tail_text_keeps_the_last_bytes() -> None:
    """Only the last `limit` bytes are decoded."""
    assert tail_text(b"abcdef", limit=3) == "def"
    assert tail_text(b"abc") == "abc"
    assert tail_text(b"abc", limit=0) == ""


def test_tail_text_replaces_invalid_utf8() -> None:
    """Undecodable bytes become U+FFFD instead of raising."""
    assert tail_text(b"ok \xff\xfe end") == "ok \ufffd\ufffd end"


def test_tail_text_drops_a_character_cut_by_the_limit() -> None:
    """A multi-byte character split by the limit is dropped, not shown as garbage."""
    data = "é".encode() + b"xyz"  # b"\xc3\xa9xyz"
    assert tail_text(data, limit=4) == "xyz"
