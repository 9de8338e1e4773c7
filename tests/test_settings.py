"""Settings: defaults, .env versus environment, validation errors that name the variable and source."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from digestbot.addresses import parse_mailbox
from digestbot.errors import ConfigError
from digestbot.mail.message import dkim_sign, make_message_id, parse_address
from digestbot.settings import (
    PLACEHOLDER_FROM,
    SETTINGS_REFERENCE,
    Settings,
    load_settings,
    render_env_example,
)
from tests.helpers import make_rsa_key, run_digestbot

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
    url = "https://example.org/unsubscribe?token={token}&e={email}"
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


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("Digest <digest@localhost>", "should have a period"),
        ("Digest <digest@host.local>", "special-use"),
        ("Digest <digest@exa_mple.org>", "invalid characters"),
        ('Digest <"quoted x"@example.org>', "is not valid: quoting"),
    ],
)
def test_mail_from_is_checked_by_the_one_address_validator(value: str, fragment: str) -> None:
    """DIGESTBOT_MAIL_FROM with a domain message building would refuse is refused at load."""
    with pytest.raises(ConfigError) as info:
        load({"DIGESTBOT_MAIL_FROM": value})
    assert info.value.field == "DIGESTBOT_MAIL_FROM"
    assert fragment in info.value.message


def test_display_names_keep_their_characters() -> None:
    """A display name with accents, dots or quoted commas is accepted and kept."""
    for value, name in [
        ("Zoë Ångström <z@example.org>", "Zoë Ångström"),
        ("Dr. Who <who@example.org>", "Dr. Who"),
        ('"Digest, Papers" <d@lab.test>', "Digest, Papers"),
    ]:
        s = load({"DIGESTBOT_MAIL_FROM": value})
        assert s.mail_from == value
        assert parse_mailbox(s.mail_from).display_name == name


@given(value=st.text(max_size=60))
@example(value="Digest <digest@example.org>")  # random text is seldom an address: this always is
@example(value="digest@bücher.example")
@hsettings(max_examples=300, deadline=None)
def test_settings_accept_exactly_the_addresses_messages_accept(value: str) -> None:
    """Any DIGESTBOT_MAIL_FROM that settings accept, message building accepts, and vice versa."""
    try:
        s = load({"DIGESTBOT_MAIL_FROM": value})
    except ConfigError:
        settings_ok = False
    else:
        settings_ok = True
    try:
        parse_address(value, what="From address", allow_display_name=True)
    except ConfigError:
        message_ok = False
    else:
        message_ok = True
    if value.strip():
        assert settings_ok == message_ok, value
    if settings_ok and value.strip():
        assert make_message_id(digest_key="k", from_addr=s.mail_from, database_id="d").endswith(
            f"@{parse_mailbox(s.mail_from).ascii_domain}>"
        )


# --------------------------------------------------------------------------- DKIM


def test_dkim_selector_that_is_not_a_dns_label_is_refused(dkim_key: Path) -> None:
    """A DKIM selector with '_' is refused at load even with a valid key, naming the selector."""
    with pytest.raises(ConfigError) as info:
        load({"DIGESTBOT_DKIM_KEY_FILE": str(dkim_key), "DIGESTBOT_DKIM_SELECTOR": "sel_"})
    assert info.value.field == "DIGESTBOT_DKIM_SELECTOR"
    assert "not a DNS name" in info.value.message


@pytest.mark.parametrize(
    "content",
    [
        b"not a key\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"",
    ],
)
def test_dkim_key_that_cannot_sign_is_refused(tmp_path: Path, content: bytes) -> None:
    """A key file dkimpy cannot sign with is a ConfigError naming DIGESTBOT_DKIM_KEY_FILE."""
    key = tmp_path / "bad.pem"
    key.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load({"DIGESTBOT_DKIM_KEY_FILE": str(key), "DIGESTBOT_DKIM_SELECTOR": "mail"})
    assert info.value.field == "DIGESTBOT_DKIM_KEY_FILE"
    assert "cannot sign" in info.value.message


def test_dkim_sign_errors_name_the_dkim_variable(dkim_key: Path) -> None:
    """dkim_sign raises ConfigError naming the DKIM variable for a bad selector, domain or key."""
    raw = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    key = dkim_key.read_bytes()
    cases = [
        ({"selector": "sel_", "domain": "example.org", "private_key": key}, "SELECTOR"),
        ({"selector": "mail", "domain": "exa mple", "private_key": key}, "DOMAIN"),
        ({"selector": "mail", "domain": "example.org", "private_key": b"junk"}, "KEY_FILE"),
    ]
    for kwargs, variable in cases:
        with pytest.raises(ConfigError) as info:
            dkim_sign(raw, **kwargs)  # type: ignore[arg-type]
        assert info.value.field == f"DIGESTBOT_DKIM_{variable}"


# --------------------------------------------------------------------------- .env hygiene


@pytest.mark.parametrize(
    "line",
    ["DIGESTBOT_SMTP_PORT 2525", "DIGESTBOT_MAIL_BACKEND: smtp", "DIGESTBOT_SMTP_PORT"],
)
def test_malformed_dotenv_line_is_an_error_naming_file_and_line(tmp_path: Path, line: str) -> None:
    """A .env line that is not NAME=VALUE is a ConfigError naming the file and its line."""
    text = f"# settings\n\nDIGESTBOT_SMTP_HOST=mail.example.org\n{line}\n"
    with pytest.raises(ConfigError) as info:
        load({}, text, tmp_path)
    assert (info.value.file, info.value.line) == (str(tmp_path / ".env"), 4)


def test_placeholder_from_is_refused_with_smtp() -> None:
    """DIGESTBOT_MAIL_BACKEND=smtp with the placeholder From is refused at load."""
    with pytest.raises(ConfigError) as info:
        load({"DIGESTBOT_MAIL_BACKEND": "smtp"})
    assert info.value.field == "DIGESTBOT_MAIL_FROM"
    assert "placeholder" in info.value.message
    assert load({"DIGESTBOT_MAIL_BACKEND": "file"}).mail_from == PLACEHOLDER_FROM


def test_feed_location_must_exist_unless_http(tmp_path: Path) -> None:
    """A feed path or file:// URL that does not exist is refused; existing ones and http(s) are fine."""
    missing = tmp_path / "nope"
    for value in (str(missing), missing.as_uri(), "~/surely-no-such-feed-folder"):
        with pytest.raises(ConfigError) as info:
            load({"DIGESTBOT_FEED_URL": value})
        assert info.value.field == "DIGESTBOT_FEED_URL"
        assert "not an existing file or folder" in info.value.message
    (tmp_path / "feed.json").write_text("[]")
    for value in (str(tmp_path), (tmp_path / "feed.json").as_uri(), "http://feed.example.org/x"):
        assert load({"DIGESTBOT_FEED_URL": value}).feed_url == value


# --------------------------------------------------------------------------- check and send agree

BAD_SETTINGS = {
    "from-localhost": ({"DIGESTBOT_MAIL_FROM": "Digest <digest@localhost>"}, "DIGESTBOT_MAIL_FROM"),
    "smtp-placeholder": ({"DIGESTBOT_MAIL_BACKEND": "smtp"}, "DIGESTBOT_MAIL_FROM"),
    "feed-missing-path": ({"DIGESTBOT_FEED_URL": "no-such-feed"}, "DIGESTBOT_FEED_URL"),
    "feed-missing-file-url": (
        {"DIGESTBOT_FEED_URL": "file:///nonexistent/feed.json"},
        "DIGESTBOT_FEED_URL",
    ),
    "dkim-selector": ({"DIGESTBOT_DKIM_SELECTOR": "sel_"}, "DIGESTBOT_DKIM_SELECTOR"),
    "dkim-bad-key": (
        {"DIGESTBOT_DKIM_SELECTOR": "mail", "BAD_KEY": "1"},
        "DIGESTBOT_DKIM_KEY_FILE",
    ),
    "dotenv-space": ({".env": "DIGESTBOT_SMTP_PORT 2525\n"}, ".env:1"),
    "dotenv-colon": ({".env": "DIGESTBOT_MAIL_BACKEND: smtp\n"}, ".env:1"),
}


def _bot_env(workdir: Path, dkim_key: Path, case: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "DIGESTBOT_LOG_LEVEL": "WARNING"}
    case = dict(case)
    if ".env" in case:
        (workdir / ".env").write_text(case.pop(".env"), encoding="utf-8")
    if "DIGESTBOT_DKIM_SELECTOR" in case:
        key = dkim_key
        if case.pop("BAD_KEY", None):
            key = workdir / "bad.pem"
            key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
        env["DIGESTBOT_DKIM_KEY_FILE"] = str(key)
    env.update(case)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_check_and_send_dry_run_refuse_the_same_settings(
    workdir: Path, dkim_key: Path, case: str
) -> None:
    """`check` and `send --dry-run` both exit 2 naming the variable (or .env line) for each bad setting."""
    values, named = BAD_SETTINGS[case]
    env = _bot_env(workdir, dkim_key, values)
    for args in (["check"], ["send", "--dry-run", "--date", "2026-03-04"]):
        result = run_digestbot(args, env=env, cwd=workdir)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert named in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_check_and_send_dry_run_accept_the_same_settings(workdir: Path, dkim_key: Path) -> None:
    """A From on the .test domain with a display name and working DKIM passes `check` and `send --dry-run`."""
    env = {
        **os.environ,
        "DIGESTBOT_MAIL_FROM": "Zoë's Digest <digest@lab.test>",
        "DIGESTBOT_DKIM_KEY_FILE": str(dkim_key),
        "DIGESTBOT_DKIM_SELECTOR": "mail-2026",
        "DIGESTBOT_LOG_LEVEL": "WARNING",
    }
    for args in (["check"], ["send", "--dry-run", "--date", "2026-03-04"]):
        result = run_digestbot(args, env=env, cwd=workdir)
        assert result.returncode == 0, (args, result.stdout, result.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dkim-selector", "dkim-bad-key"])
def test_send_with_broken_dkim_exits_2_and_fails_no_digest(
    workdir: Path, dkim_key: Path, case: str
) -> None:
    """A real `send` with a bad DKIM selector or key exits 2 before planning: no digest is marked failed."""
    values, named = BAD_SETTINGS[case]
    env = _bot_env(workdir, dkim_key, values)
    result = run_digestbot(["send", "--date", "2026-03-04"], env=env, cwd=workdir)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert named in result.stderr
    assert not list((workdir / "outbox").glob("*.eml")) if (workdir / "outbox").exists() else True
    db = workdir / "digestbot.db"
    if db.exists():
        engine = sa.create_engine(f"sqlite:///{db}")
        with engine.connect() as conn:
            has_digests = conn.execute(
                sa.text("SELECT count(*) FROM sqlite_master WHERE name = 'digests'")
            ).scalar()
            failed = (
                conn.execute(
                    sa.text("SELECT count(*) FROM digests WHERE state = 'failed'")
                ).scalar()
                if has_digests
                else 0
            )
        engine.dispose()
        assert failed == 0


def test_dkim_key_under_1024_bits_is_refused(tmp_path: Path) -> None:
    """A DKIM key of fewer than 1024 bits is refused at load naming the key file (RFC 8301)."""
    import subprocess

    pem = subprocess.run(["openssl", "genrsa", "768"], check=True, capture_output=True).stdout
    key = tmp_path / "small.pem"
    key.write_bytes(pem)
    env = {
        "DIGESTBOT_MAIL_FROM": "Digest <digest@example.org>",
        "DIGESTBOT_DKIM_KEY_FILE": str(key),
        "DIGESTBOT_DKIM_SELECTOR": "mail",
    }
    with pytest.raises(ConfigError) as info:
        load(env)
    assert info.value.field == "DIGESTBOT_DKIM_KEY_FILE"
    assert "768-bit" in info.value.message and "RFC 8301" in info.value.message


def test_group_as_mail_from_says_groups_are_not_allowed() -> None:
    """DIGESTBOT_MAIL_FROM written as a group is refused saying a group is not allowed."""
    with pytest.raises(ConfigError) as info:
        load({"DIGESTBOT_MAIL_FROM": "Group: a@example.org;"})
    assert "group" in info.value.message and "found 1" not in info.value.message


def test_email_validator_reason_follows_a_separator_in_one_sentence() -> None:
    """An address email-validator refuses is reported as the value, 'is not valid: ', and its reason as one sentence."""
    with pytest.raises(ConfigError) as info:
        load({"DIGESTBOT_MAIL_FROM": "Digest <digest@localhost>"})
    message = info.value.message
    assert "'Digest <digest@localhost>' is not valid: the part after" in message
    reason = message.split("is not valid: ", 1)[1].split("; expected", 1)[0]
    assert ". " not in reason and reason.endswith("should have a period")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DIGESTBOT_UNSUBSCRIBE_URL", "https://exämple.org/unsubscribe?token={token}"),
        ("DIGESTBOT_UNSUBSCRIBE_URL", "https://example.org/unsubscribe?token={token}&a=b,c"),
        ("DIGESTBOT_UNSUBSCRIBE_URL", "https://example.org/unsubscribe?token={token}&a=b|c"),
    ],
)
def test_unsubscribe_url_a_header_cannot_carry_is_refused_at_load(name: str, value: str) -> None:
    """An unsubscribe URL with non-ASCII, ',' or '|' is refused at load by the one header-URI rule."""
    with pytest.raises(ConfigError) as info:
        load({name: value, "DIGESTBOT_UNSUBSCRIBE_SECRET": "x" * 32})
    assert info.value.field == name
    assert "List-Unsubscribe URI" in info.value.message


def test_idn_addresses_reach_headers_in_ascii() -> None:
    """An internationalized From or unsubscribe domain gives ASCII (IDNA) List-Id, mailto and envelope."""
    s = load(
        {
            "DIGESTBOT_MAIL_FROM": "Digest <digest@Bücher.example>",
            "DIGESTBOT_UNSUBSCRIBE_EMAIL": "u@bücher.example",
        }
    )
    assert s.effective_list_id == "<digest.xn--bcher-kva.example>"
    assert s.effective_unsubscribe_email == "u@xn--bcher-kva.example"
    assert s.mail_from_address == "digest@xn--bcher-kva.example"


_LIST_ID_TEXT = st.lists(
    st.sampled_from(list("ab.-_<> \"'üé,|{}^`") + ["xn--bcher-kva", "example.org"]),
    max_size=12,
).map("".join)


@hsettings(max_examples=60, deadline=None)
@given(list_id=_LIST_ID_TEXT, url_tail=_LIST_ID_TEXT)
@example(list_id="", url_tail="{{")  # an escaped brace once loaded, and no message could carry it
def test_list_id_and_unsubscribe_url_that_load_make_a_message(list_id: str, url_tail: str) -> None:
    """A DIGESTBOT_LIST_ID or DIGESTBOT_UNSUBSCRIBE_URL that loads also passes the sample message app.mail_context builds: one grammar for settings and messages."""
    from digestbot import app

    env = {
        "DIGESTBOT_MAIL_FROM": "Digest <digest@example.org>",
        "DIGESTBOT_LIST_ID": list_id,
        "DIGESTBOT_UNSUBSCRIBE_URL": "https://example.org/unsubscribe?token={token}&x=" + url_tail,
        "DIGESTBOT_UNSUBSCRIBE_SECRET": "s" * 32,
    }
    try:
        loaded = load(env)
    except ConfigError:
        return
    app.mail_context(loaded)  # raises ConfigError if a message could not carry them


@pytest.mark.parametrize(
    "value",
    ["https://example.org/feed", "http://", "ftp://example.org/x", "file://other/x", "{feed}"],
)
def test_feed_location_is_decided_once(value: str, tmp_path: Path) -> None:
    """DIGESTBOT_FEED_URL loads exactly when the feed source can use it (sources.base.locate_feed)."""
    from digestbot.sources.base import locate_feed

    where = locate_feed(value.replace("{feed}", str(tmp_path)))
    try:
        load({"DIGESTBOT_FEED_URL": value.replace("{feed}", str(tmp_path))})
    except ConfigError:
        assert where.kind == "bad"
    else:
        assert where.kind in ("http", "path")


@pytest.mark.parametrize(
    "line", ["DIGESTBOT_SMTP_PASSWORD hunter2secret", "DIGESTBOT_UNSUBSCRIBE_SECRET: hunter2secret"]
)
def test_a_malformed_env_line_naming_a_secret_is_one_error_line_without_the_secret(
    workdir: Path, line: str
) -> None:
    """A malformed .env line for a secret setting gives exactly one error line naming .env:1, and the secret's value appears nowhere in the output (no python-dotenv warning either)."""
    (workdir / ".env").write_text(f"{line}\n", encoding="utf-8")
    env = {**os.environ, "DIGESTBOT_LOG_LEVEL": "WARNING"}
    result = run_digestbot(["check"], env=env, cwd=workdir)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "hunter2secret" not in result.stdout + result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and ".env:1" in errors[0], result.stderr
    assert line.split()[0].rstrip(":") in errors[0]


@pytest.mark.parametrize("value", ["bogus", "-1", "subscribers.toml"])  # the last: a file
@pytest.mark.parametrize("name", [doc.name for doc in SETTINGS_REFERENCE])
def test_check_and_send_dry_run_agree_on_every_setting(
    workdir: Path, name: str, value: str
) -> None:
    """For every setting in SETTINGS_REFERENCE set to a bad value, `check` refuses it (exit 2) exactly when `send --dry-run` does, `check --smtp` (which also reads the feed) ends with the same exit code as the dry run, and none prints a traceback."""
    from typer.testing import CliRunner

    from digestbot.cli import cli

    runner = CliRunner()
    env = {"DIGESTBOT_LOG_LEVEL": "WARNING", name: value}
    codes = {}
    for args in (["check"], ["check", "--smtp"], ["send", "--dry-run", "--date", "2026-03-04"]):
        result = runner.invoke(cli, args, env=env)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args,
            repr(result.exception),
        )
        assert "Traceback" not in result.output
        codes[args[-1]] = result.exit_code
    assert (codes["check"] == 2) == (codes["2026-03-04"] == 2), codes
    assert codes["--smtp"] == codes["2026-03-04"], codes
