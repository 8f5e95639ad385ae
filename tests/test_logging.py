"""Logging setup: JSON lines for journald, console for terminals, level filtering."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from autoloop_daemon.observers.logs import configure_logging, get_logger
from tests.helpers.logs import json_lines

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class TtyStream(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        """Pretend to be a TTY."""
        return True


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Leave structlog as we found it, so other tests are not affected."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_json_format_writes_one_object_per_line_with_context() -> None:
    """Each event is one JSON line with event, level, UTC timestamp and bound contextvars."""
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream, cache=False)
    log = get_logger()
    with structlog.contextvars.bound_contextvars(target="coding-standards", iteration=3):
        log.info("iteration_finished", decision="keep", weighted_score=0.72)
    log.warning("target_stopped", reason="plateau")

    first, second = json_lines(stream.getvalue(), strict=True)
    assert first["event"] == "iteration_finished"
    assert first["level"] == "info"
    assert first["target"] == "coding-standards"
    assert first["iteration"] == 3
    assert first["decision"] == "keep"
    assert first["weighted_score"] == 0.72
    stamp = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=1)

    assert second["event"] == "target_stopped"
    assert second["level"] == "warning"
    assert "target" not in second  # the context ended with the with-block


def test_auto_format_is_json_when_not_a_tty() -> None:
    """auto + a pipe/file/journald stream renders JSON."""
    stream = io.StringIO()
    configure_logging("auto", stream=stream, cache=False)
    get_logger().info("daemon_started", targets=2)
    (line,) = json_lines(stream.getvalue(), strict=True)
    assert line["event"] == "daemon_started"
    assert line["targets"] == 2


def test_json_renders_paths_and_exceptions() -> None:
    """Paths become strings; log.exception carries a structured traceback."""
    stream = io.StringIO()
    configure_logging("json", stream=stream, cache=False)
    log = get_logger()
    log.info("state_saved", path=Path("/var/lib/autoloopd/x/autoloop_state.json"))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("iteration_failed")

    saved, failed = json_lines(stream.getvalue(), strict=True)
    assert saved["path"] == "/var/lib/autoloopd/x/autoloop_state.json"
    assert failed["level"] == "error"
    assert failed["event"] == "iteration_failed"
    exc = failed["exception"]
    assert isinstance(exc, list)
    assert exc[0]["exc_type"] == "RuntimeError"
    assert exc[0]["exc_value"] == "boom"


def test_get_logger_with_name_adds_no_fields() -> None:
    """get_logger(__name__) logs exactly what the call site passes, plus the standard keys."""
    stream = io.StringIO()
    configure_logging("json", stream=stream, cache=False)
    get_logger("autoloop_daemon.target").info("cooldown_started", cooldown_s=1800)
    (line,) = json_lines(stream.getvalue(), strict=True)
    assert set(line) == {"event", "level", "timestamp", "cooldown_s"}


def test_module_level_logger_follows_later_configuration() -> None:
    """A logger created at import time, before configure_logging, still uses the new setup."""
    early = get_logger(__name__)
    stream = io.StringIO()
    configure_logging("json", stream=stream, cache=False)
    early.info("daemon_started")
    (line,) = json_lines(stream.getvalue(), strict=True)
    assert line["event"] == "daemon_started"


def test_console_format_is_not_json_and_has_no_colors_off_a_tty() -> None:
    """console on a non-TTY: human-readable, no ANSI escapes, context still shown."""
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream, cache=False)
    with structlog.contextvars.bound_contextvars(target="tech-article"):
        get_logger().info("iteration_started", iteration=1)
    out = stream.getvalue()
    assert out.count("\n") == 1
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
    assert "iteration_started" in out
    assert "target=tech-article" in out
    assert not ANSI.search(out)


def test_auto_format_on_a_tty_is_colored_console() -> None:
    """auto + a terminal renders the console format, in colors."""
    stream = TtyStream()
    configure_logging("auto", stream=stream, cache=False)
    get_logger().info("daemon_started")
    out = stream.getvalue()
    assert ANSI.search(out)
    assert "daemon_started" in ANSI.sub("", out)
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_json_format_on_a_tty_is_still_json() -> None:
    """An explicit json format wins over the terminal check."""
    stream = TtyStream()
    configure_logging("json", stream=stream, cache=False)
    get_logger().info("daemon_started")
    (line,) = json_lines(stream.getvalue(), strict=True)
    assert line["event"] == "daemon_started"


def test_level_filtering_drops_events_below_the_level() -> None:
    """log_level=warning keeps warning and error, drops debug and info."""
    stream = io.StringIO()
    configure_logging("json", "WARNING", stream=stream, cache=False)
    log = get_logger()
    log.debug("a_debugged")
    log.info("b_informed")
    log.warning("c_warned")
    log.error("d_failed")
    assert [line["event"] for line in json_lines(stream.getvalue(), strict=True)] == [
        "c_warned",
        "d_failed",
    ]


def test_debug_level_keeps_debug_events() -> None:
    """log_level=debug lets debug through."""
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream, cache=False)
    get_logger().debug("budget_reserved", cost_usd=0.1)
    assert [line["level"] for line in json_lines(stream.getvalue(), strict=True)] == ["debug"]


def test_default_stream_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a stream, events go to (the current) sys.stdout."""
    configure_logging("json", cache=False)
    get_logger().info("daemon_started")
    out, err = capsys.readouterr()
    assert json.loads(out)["event"] == "daemon_started"
    assert err == ""


def test_unknown_format_or_level_is_rejected() -> None:
    """Values outside the documented sets raise ValueError naming the setting."""
    with pytest.raises(ValueError, match="log_format"):
        configure_logging("xml", cache=False)
    with pytest.raises(ValueError, match="log_level"):
        configure_logging("json", "loud", cache=False)


def test_capture_logs_sees_events_when_not_cached() -> None:
    """With cache=False, structlog.testing.capture_logs works after configure_logging."""
    configure_logging("json", stream=io.StringIO(), cache=False)
    log = get_logger()
    with structlog.testing.capture_logs() as captured:
        log.info("iteration_finished", iteration=1)
    assert captured == [{"event": "iteration_finished", "iteration": 1, "log_level": "info"}]
