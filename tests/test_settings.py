"""Settings: defaults, .env versus environment, validation errors that name the variable and source."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from digestbot.errors import ConfigError
from digestbot.settings import (
    SETTINGS_REFERENCE,
    Settings,
    load_settings,
    render_env_example,
)
from tests.helpers import make_rsa_key

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2048-bit RSA private key in a PEM file."""
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    path.write_bytes(make_rsa_key()[0])
    return path
SECRET = "s3cr3t-value-that-must-not-leak"


def load(env: dict[str, str] | None = None, dotenv: str | None = None, tmp: Path | None = None):
    """Load settings from an explicit environment and optional .env text, never from os.environ."""
    env_file = None
    if dotenv is not None:
        assert tmp is not None
        env_file = tmp / ".env"
        env_file.write_text(dotenv, encoding="utf-8")
    return load_settings(env or {}, env_file=env_file)


def test_defaults_match_the_documented_values() -> None:
    """With nothing set, every field has its documented default."""
    s = load()
    assert s == Settings()
    assert s.database_url == "sqlite:///digestbot.db"
    assert s.subscribers_path == Path("subscribers.toml")
    assert s.feed_url == "https://huggingface.co/api/daily_papers"
    assert (s.fetch_retries, s.fetch_timeout, s.lookback_days, s.fetch_interval_minutes) == (
        3,
        30.0,
        2,
        60,
    )
    assert s.mail_backend == "file" and s.mail_dir == Path("outbox")
    assert (s.smtp_host, s.smtp_port, s.smtp_security, s.smtp_timeout) == (
        "localhost",
        587,
        "starttls",
        30.0,
    )
    assert s.smtp_rate is None and s.hf_token is None and s.templates_dir is None
    assert (s.retry_initial, s.retry_max, s.retry_give_up) == (60.0, 3600.0, 86400.0)
    assert s.log_level == "INFO"


def test_derived_addresses_default_from_the_from_address() -> None:
    """From address, domain, unsubscribe mailto, List-Id and DKIM domain derive from DIGESTBOT_MAIL_FROM."""
    s = load({"DIGESTBOT_MAIL_FROM": "Paper Digest <Digest@Example.ORG>"})
    assert s.mail_from_address == "Digest@example.org"
    assert s.from_domain == "example.org"
    assert s.effective_unsubscribe_email == "Digest@example.org"
    assert s.effective_list_id == "<digest.example.org>"
    assert s.effective_dkim_domain is None


def test_reference_defaults_agree_with_the_dataclass() -> None:
    """Each default written in SETTINGS_REFERENCE is what load_settings produces when unset."""
    defaults = {d.name: d.default for d in SETTINGS_REFERENCE}
    s = Settings()
    assert defaults["DIGESTBOT_FETCH_TIMEOUT"] == f"{s.fetch_timeout:g}"
    assert defaults["DIGESTBOT_SMTP_PORT"] == str(s.smtp_port)
    assert defaults["DIGESTBOT_MAIL_FROM"] == s.mail_from
    assert defaults["DIGESTBOT_SUBSCRIBERS"] == str(s.subscribers_path)
    # Loading every documented default explicitly gives the same settings as loading nothing.
    explicit = {d.name: d.default for d in SETTINGS_REFERENCE}
    assert load(explicit) == s


def test_every_field_is_documented() -> None:
    """SETTINGS_REFERENCE has one entry per Settings field, and no two with the same name."""
    names = [d.name for d in SETTINGS_REFERENCE]
    assert len(names) == len(set(names))
    assert len(names) == len(dataclasses.fields(Settings))
    assert all(d.description and "\n" not in d.description for d in SETTINGS_REFERENCE)


def test_env_example_lists_exactly_the_reference() -> None:
    """.env.example names exactly the SETTINGS_REFERENCE variables, each commented with its default."""
    text = (REPO / ".env.example").read_text(encoding="utf-8")
    found = re.findall(r"^# ([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.MULTILINE)
    assert [name for name, _ in found] == [d.name for d in SETTINGS_REFERENCE]
    assert text == render_env_example()


def test_env_example_loads_as_a_dotenv_file(tmp_path: Path) -> None:
    """Copying .env.example to .env unchanged gives the default settings."""
    text = (REPO / ".env.example").read_text(encoding="utf-8")
    assert load(dotenv=text, tmp=tmp_path) == Settings()


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    """Values come from .env unless the process environment sets the same variable."""
    s = load(
        {"DIGESTBOT_SMTP_PORT": "2525"},
        "DIGESTBOT_SMTP_PORT=25\nDIGESTBOT_SMTP_HOST=mail.example.org\n",
        tmp_path,
    )
    assert s.smtp_port == 2525
    assert s.smtp_host == "mail.example.org"


def test_dotenv_does_not_touch_os_environ(tmp_path: Path) -> None:
    """Reading .env never adds its variables to os.environ."""
    name = "DIGESTBOT_LOG_LEVEL"
    before = os.environ.get(name)
    load({}, f"{name}=DEBUG\n", tmp_path)
    assert os.environ.get(name) == before


def test_missing_dotenv_is_fine(tmp_path: Path) -> None:
    """A missing .env file is not an error."""
    assert load_settings({}, env_file=tmp_path / "nope.env") == Settings()


def test_empty_value_means_default(tmp_path: Path) -> None:
    """A variable set to an empty string falls back to its default."""
    s = load({"DIGESTBOT_SMTP_PORT": "", "DIGESTBOT_SMTP_RATE": "  "})
    assert s.smtp_port == 587 and s.smtp_rate is None


def test_values_are_parsed_and_normalized(tmp_path: Path) -> None:
    """Numbers, paths, choices and optional strings are converted to their types."""
    (tmp_path / "tpl").mkdir()
    s = load(
        {
            "DIGESTBOT_MAIL_BACKEND": "SMTP",
            "DIGESTBOT_MAIL_FROM": "Papers <papers@lab.example.net>",
            "DIGESTBOT_SMTP_SECURITY": "ssl",
            "DIGESTBOT_SMTP_RATE": "0.5",
            "DIGESTBOT_FETCH_TIMEOUT": "12.5",
            "DIGESTBOT_LOG_LEVEL": "debug",
            "DIGESTBOT_TEMPLATES_DIR": str(tmp_path / "tpl"),
            "DIGESTBOT_UNSUBSCRIBE_EMAIL": "mailto:leave@example.org",
            "DIGESTBOT_LIST_ID": "Paper Digest <papers.example.org>",
        }
    )
    assert s.mail_backend == "smtp" and s.smtp_security == "ssl"
    assert s.smtp_rate == 0.5 and s.fetch_timeout == 12.5
    assert s.log_level == "DEBUG"
    assert s.templates_dir == tmp_path / "tpl"
    assert s.effective_unsubscribe_email == "leave@example.org"
    assert s.effective_list_id == "Paper Digest <papers.example.org>"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("DIGESTBOT_FETCH_RETRIES", "three", "not a whole number"),
        ("DIGESTBOT_FETCH_RETRIES", "-1", "out of range"),
        ("DIGESTBOT_SMTP_PORT", "70000", "from 1 to 65535"),
        ("DIGESTBOT_LOOKBACK_DAYS", "2.5", "not a whole number"),
        ("DIGESTBOT_FETCH_TIMEOUT", "soon", "not a number"),
        ("DIGESTBOT_FETCH_TIMEOUT", "0", "greater than 0"),
        ("DIGESTBOT_SMTP_RATE", "-3", "out of range"),
        ("DIGESTBOT_SMTP_TIMEOUT", "nan", "not a number"),
        ("DIGESTBOT_MAIL_BACKEND", "sendmail", "smtp, file, console"),
        ("DIGESTBOT_SMTP_SECURITY", "tls", "starttls, ssl, none"),
        ("DIGESTBOT_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
        ("DIGESTBOT_MAIL_FROM", "Paper Digest", "Paper Digest <digest@example.org>"),
        ("DIGESTBOT_MAIL_FROM", "a@example.org, b@example.org", "exactly one address"),
        ("DIGESTBOT_MAIL_FROM", "x@example.org\r\nBcc: y@example.org", "control character"),
        ("DIGESTBOT_UNSUBSCRIBE_EMAIL", "Leave <leave@example.org>", "bare address"),
        ("DIGESTBOT_UNSUBSCRIBE_URL", "http://example.org/u?t={token}", "not an https URL"),
        ("DIGESTBOT_UNSUBSCRIBE_URL", "https://example.org/unsubscribe", "{token}"),
        ("DIGESTBOT_UNSUBSCRIBE_URL", "https://example.org/u/{token}/{user}", "{user}"),
        ("DIGESTBOT_UNSUBSCRIBE_URL", "https://example.org/u/{token", "braces"),
        ("DIGESTBOT_FEED_URL", "ftp://example.org/papers", "unsupported scheme"),
        ("DIGESTBOT_DATABASE_URL", "digestbot.db", "not a database URL"),
        ("DIGESTBOT_TEMPLATES_DIR", "/nonexistent/templates", "not an existing folder"),
        ("DIGESTBOT_LIST_ID", "no dots here", "not a List-Id"),
        ("DIGESTBOT_DKIM_SELECTOR", "bad.sel!", "not a DNS name"),
    ],
)
def test_bad_environment_value_names_variable_and_source(
    name: str, value: str, fragment: str
) -> None:
    """A bad value from the environment raises ConfigError naming the variable and 'environment'."""
    with pytest.raises(ConfigError) as info:
        load({name: value, "DIGESTBOT_UNSUBSCRIBE_SECRET": "x" * 32})
    err = info.value
    assert err.field == name
    assert err.file == "environment"
    assert err.line is None
    assert fragment in err.message
    assert name in str(err)


def test_bad_dotenv_value_names_file_and_line(tmp_path: Path) -> None:
    """A bad value from .env names the .env file and the line it is on."""
    text = "# comment\n\nDIGESTBOT_SMTP_HOST=mail.example.org\nDIGESTBOT_SMTP_PORT=abc\n"
    with pytest.raises(ConfigError) as info:
        load({}, text, tmp_path)
    err = info.value
    assert (err.field, err.file, err.line) == ("DIGESTBOT_SMTP_PORT", str(tmp_path / ".env"), 4)
    assert f"{tmp_path / '.env'}:4" in str(err)


def test_default_env_file_is_reported_as_dot_env(tmp_path: Path, monkeypatch) -> None:
    """With the default env_file, a bad value is reported in '.env' at its line."""
    monkeypatch.chdir(tmp_path)
    Path(".env").write_text("export DIGESTBOT_LOG_LEVEL='chatty'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings({})
    assert (info.value.file, info.value.line, info.value.field) == (
        ".env",
        1,
        "DIGESTBOT_LOG_LEVEL",
    )


def test_unknown_digestbot_variable_in_dotenv_is_an_error(tmp_path: Path) -> None:
    """A misspelt DIGESTBOT_ variable in .env is reported with its line and a suggestion."""
    with pytest.raises(ConfigError) as info:
        load({}, "OTHER_TOOL=1\nDIGESTBOT_SMTP_HOSTNAME=mail.example.org\n", tmp_path)
    assert (info.value.field, info.value.line) == ("DIGESTBOT_SMTP_HOSTNAME", 2)
    assert "did you mean DIGESTBOT_SMTP_HOST?" in info.value.message


def test_line_after_multiline_value_is_right(tmp_path: Path) -> None:
    """Line numbers stay right after a quoted value that spans several lines."""
    text = 'DIGESTBOT_SMTP_PASSWORD="a\nb"\nDIGESTBOT_SMTP_PORT=x\n'
    with pytest.raises(ConfigError) as info:
        load({}, text, tmp_path)
    assert info.value.line == 3


def test_dkim_half_configured_is_an_error(tmp_path: Path) -> None:
    """Setting the DKIM key file without a selector names the missing variable, where the key was set."""
    key = tmp_path / "dkim.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load({}, f"DIGESTBOT_DKIM_KEY_FILE={key}\n", tmp_path)
    assert info.value.field == "DIGESTBOT_DKIM_SELECTOR"
    assert info.value.line == 1
    assert "set both or neither" in info.value.message


def test_dkim_configured_defaults_domain_to_from_domain(dkim_key: Path) -> None:
    """With key file and selector set, the signing domain defaults to the From domain."""
    s = load(
        {
            "DIGESTBOT_DKIM_KEY_FILE": str(dkim_key),
            "DIGESTBOT_DKIM_SELECTOR": "mail2024",
            "DIGESTBOT_MAIL_FROM": "digest@papers.example.org",
        }
    )
    assert s.effective_dkim_domain == "papers.example.org"
    assert s.dkim_selector == "mail2024"


def test_dkim_missing_key_file_is_an_error(tmp_path: Path) -> None:
    """A DKIM key file that does not exist is reported with its variable."""
    with pytest.raises(ConfigError) as info:
        load(
            {
                "DIGESTBOT_DKIM_KEY_FILE": str(tmp_path / "missing.pem"),
                "DIGESTBOT_DKIM_SELECTOR": "s1",
            }
        )
    assert info.value.field == "DIGESTBOT_DKIM_KEY_FILE"


def test_retry_max_below_initial_is_an_error() -> None:
    """DIGESTBOT_RETRY_MAX smaller than DIGESTBOT_RETRY_INITIAL is rejected."""
    with pytest.raises(ConfigError) as info:
        load({"DIGESTBOT_RETRY_INITIAL": "600", "DIGESTBOT_RETRY_MAX": "60"})
    assert info.value.field == "DIGESTBOT_RETRY_MAX"
    with pytest.raises(ConfigError) as info:
        load({"DIGESTBOT_RETRY_INITIAL": "7200"})
    assert info.value.field == "DIGESTBOT_RETRY_INITIAL"


def test_unsubscribe_url_needs_a_secret() -> None:
    """A one-click unsubscribe URL without a signing secret is rejected, and a short secret too."""
    url = "https://example.org/unsubscribe?t={token}&e={email}"
    with pytest.raises(ConfigError) as info:
        load({"DIGESTBOT_UNSUBSCRIBE_URL": url})
    assert info.value.field == "DIGESTBOT_UNSUBSCRIBE_SECRET"
    assert info.value.file == "environment"
    with pytest.raises(ConfigError) as info:
        load({"DIGESTBOT_UNSUBSCRIBE_URL": url, "DIGESTBOT_UNSUBSCRIBE_SECRET": "short"})
    assert "at least 16" in info.value.message
    s = load({"DIGESTBOT_UNSUBSCRIBE_URL": url, "DIGESTBOT_UNSUBSCRIBE_SECRET": "k" * 16})
    assert s.unsubscribe_url == url


def test_secrets_never_appear_in_repr() -> None:
    """HF_TOKEN, the SMTP password and the unsubscribe secret are not in repr() of Settings."""
    s = load(
        {
            "HF_TOKEN": "hf_" + SECRET,
            "DIGESTBOT_SMTP_PASSWORD": SECRET + "-pw",
            "DIGESTBOT_UNSUBSCRIBE_SECRET": SECRET + "-unsub",
        }
    )
    assert s.hf_token == "hf_" + SECRET
    assert SECRET not in repr(s) and SECRET not in str(s)


def test_secrets_never_appear_in_errors() -> None:
    """An invalid secret is reported without echoing its value."""
    with pytest.raises(ConfigError) as info:
        load({"HF_TOKEN": f"hf_{SECRET} trailing"})
    assert info.value.field == "HF_TOKEN"
    assert SECRET not in str(info.value)


def test_nothing_is_read_at_import_time() -> None:
    """Importing digestbot.settings in a fresh interpreter reads no file and builds no settings."""
    import subprocess
    import sys

    code = (
        "import builtins, io\n"
        "opened = []\n"
        "real = io.open\n"
        "def spy(f, *a, **k):\n"
        "    opened.append(str(f)); return real(f, *a, **k)\n"
        "builtins.open = spy\n"
        "import digestbot.settings\n"
        "print([f for f in opened if f.endswith('.env') or f.endswith('.toml')])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "[]"


INT_SETTINGS = ["DIGESTBOT_FETCH_RETRIES", "DIGESTBOT_SMTP_PORT", "DIGESTBOT_LOOKBACK_DAYS"]


@given(name=st.sampled_from(INT_SETTINGS), value=st.text(max_size=40))
@hsettings(max_examples=300, deadline=None)
def test_arbitrary_int_values_are_valid_or_config_errors(name: str, value: str) -> None:
    """Any string for an integer setting yields an int in range or a ConfigError, nothing else."""
    try:
        s = load({name: value})
    except ConfigError as err:
        assert err.field == name
        return
    field = {
        "DIGESTBOT_FETCH_RETRIES": "fetch_retries",
        "DIGESTBOT_SMTP_PORT": "smtp_port",
        "DIGESTBOT_LOOKBACK_DAYS": "lookback_days",
    }[name]
    assert isinstance(getattr(s, field), int)


@given(value=st.text(max_size=40))
@hsettings(max_examples=200, deadline=None)
def test_arbitrary_float_and_address_values_are_valid_or_config_errors(value: str) -> None:
    """Any string for a number or an address setting yields a value or a ConfigError, nothing else."""
    for name in (
        "DIGESTBOT_SMTP_RATE",
        "DIGESTBOT_MAIL_FROM",
        "DIGESTBOT_UNSUBSCRIBE_URL",
        "DIGESTBOT_LIST_ID",
        "DIGESTBOT_FEED_URL",
    ):
        try:
            s = load({name: value, "DIGESTBOT_UNSUBSCRIBE_SECRET": "k" * 16})
        except ConfigError as err:
            assert err.field in (name, "DIGESTBOT_UNSUBSCRIBE_SECRET")
        else:
            assert s.mail_from_address  # a mail_from that loaded always parses
